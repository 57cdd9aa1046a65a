$ProgressPreference='SilentlyContinue';$ErrorActionPreference='Stop'
$r=[ordered]@{schema=1;computer=$env:COMPUTERNAME;now=[DateTime]::UtcNow;exsetup_version=$null;build_source=$null;edge=$false;service=$null;events=@();log=$null;errors=@()}
try{$r.exsetup_version=(Get-Command ExSetup.exe).FileVersionInfo.FileVersion;$r.build_source='exsetup'}catch{try{$i=(Get-ItemProperty 'HKLM:\SOFTWARE\Microsoft\ExchangeServer\v15\Setup').MsiInstallPath;$r.exsetup_version=(Get-Item (Join-Path $i 'bin\ExSetup.exe')).VersionInfo.FileVersion;$r.build_source='registry'}catch{$r.errors+="build: $_"}}
$r.edge=Test-Path 'HKLM:\SOFTWARE\Microsoft\ExchangeServer\v15\EdgeTransportRole'
try{$s=Get-Service MSExchangeMitigation -EA SilentlyContinue;if($s){$r.service=@{status=[string]$s.Status;start_type=[string]$s.StartType}}}catch{$r.errors+="service: $_"}
try{$r.events=@(Get-WinEvent -FilterHashtable @{LogName='Application';ProviderName='MSExchange Mitigation Service';Id=1005,1006,1008;StartTime=(Get-Date).AddHours(-$P.LookbackHours)} -MaxEvents $P.MaxEvents|%{@{id=$_.Id;time=$_.TimeCreated.ToUniversalTime();message=$_.Message}})}catch{if("$_" -notmatch 'No events were found'){$r.errors+="events: $_"}}
try{$f=Get-ChildItem (Join-Path $env:ExchangeInstallPath 'Logging\MitigationService') -File|sort LastWriteTimeUtc|select -Last 1
if($f){$s=[IO.File]::Open($f.FullName,'Open','Read','ReadWrite,Delete');try{$n=[Math]::Min($s.Length,$P.LogTailBytes);[void]$s.Seek(-$n,'End');$b=New-Object byte[] $n;$n=$s.Read($b,0,$n)}finally{$s.Close()}
$r.log=@{name=$f.Name;length=$f.Length;last_write=$f.LastWriteTimeUtc;tail=[Text.Encoding]::UTF8.GetString($b,0,$n)}}}catch{$r.errors+="log: $_"}
if($P.CheckEndpoint){$w=[Diagnostics.Stopwatch]::StartNew();$e=@{status=0;ms=0;error=$null}
try{[Net.ServicePointManager]::SecurityProtocol='Tls12';$a=@{Uri='https://officeclient.microsoft.com/GetExchangeMitigations';UseBasicParsing=$true;TimeoutSec=$P.EndpointTimeoutSec}
if($P.Proxy){$a.Proxy=$P.Proxy;$a.ProxyUseDefaultCredentials=$true};$e.status=[int](Invoke-WebRequest @a).StatusCode}catch{$e.error="$($_.Exception.Message)";if($_.Exception.Response){$e.status=[int]$_.Exception.Response.StatusCode}}
$e.ms=$w.ElapsedMilliseconds;$r.endpoint=$e}
[regex]::Replace((ConvertTo-Json -InputObject $r -Depth 4 -Compress),'[^\x00-\x7e]',{param($m)'\u{0:x4}' -f [int][char]$m.Value})
