$ProgressPreference='SilentlyContinue';$ErrorActionPreference='Stop'
function Err($x){@{id=[string]$x.FullyQualifiedErrorId;type=$x.Exception.GetType().FullName;message="$x"}}
$r=[ordered]@{schema=1;computer=$env:COMPUTERNAME;now=[DateTime]::UtcNow;culture=$null;ui_culture=$null;is_admin=$null;exsetup_version=$null;winhttp_settings=$null;service=$null;service_key=$null;log_folder=$null;log_files=@();events=@();event_errors=@();errors=@()}
try{$r.culture=(Get-Culture).Name;$r.ui_culture=(Get-UICulture).Name}catch{$r.errors+=Err $_}
try{$r.is_admin=([Security.Principal.WindowsPrincipal][Security.Principal.WindowsIdentity]::GetCurrent()).IsInRole([Security.Principal.WindowsBuiltInRole]::Administrator)}catch{$r.errors+=Err $_}
try{$r.exsetup_version=(Get-Command ExSetup.exe).FileVersionInfo.FileVersion}catch{$r.errors+=Err $_}
try{$r.winhttp_settings=[Convert]::ToBase64String((Get-ItemProperty 'HKLM:\SOFTWARE\Microsoft\Windows\CurrentVersion\Internet Settings\Connections').WinHttpSettings)}catch{$r.winhttp_settings=@{error=Err $_}}
try{$s=Get-Service MSExchangeMitigation;$r.service=@{status=[string]$s.Status;start_type=[string]$s.StartType}}catch{$r.service=@{error=Err $_}}
try{$k=Get-ItemProperty 'HKLM:\SYSTEM\CurrentControlSet\Services\MSExchangeMitigation';$r.service_key=@{start=$k.Start;account=[string]$k.ObjectName}}catch{$r.service_key=@{error=Err $_}}
try{$d=Join-Path $env:ExchangeInstallPath 'Logging\MitigationService';$r.log_folder=@{path=$d;exists=(Test-Path $d)}
if($r.log_folder.exists){$a=@(Get-ChildItem $d -File|sort LastWriteTimeUtc -Descending);$r.log_folder.file_count=$a.Count;$i=0
$r.log_files=@($a|select -First $P.ListFiles|%{$o=@{name=$_.Name;length=$_.Length;last_write=$_.LastWriteTimeUtc}
if($i++ -lt $P.ReadFiles){try{$s=[IO.File]::Open($_.FullName,'Open','Read','ReadWrite,Delete');try{$o.stream_length=$s.Length
$n=[Math]::Min($s.Length,$P.HeadBytes);$b=New-Object byte[] $n;$n=$s.Read($b,0,$n);$o.head=[Convert]::ToBase64String($b,0,$n)
$n=[Math]::Min($s.Length,$P.TailBytes);[void]$s.Seek(-$n,'End');$b=New-Object byte[] $n;$n=$s.Read($b,0,$n);$o.tail=[Convert]::ToBase64String($b,0,$n)}finally{$s.Close()}}catch{$o.error=Err $_}};$o})}}catch{$r.log_folder=@{error=Err $_}}
$q="*[System[Provider[@Name='MSExchange Mitigation Service'] and TimeCreated[timediff(@SystemTime) <= $(3600000*$P.LookbackHours)]]]"
try{$r.events=@(Get-WinEvent -LogName Application -FilterXPath $q -MaxEvents $P.MaxEvents -EA SilentlyContinue -ErrorVariable v|%{$m=$_.Message;if($m -and $m.Length -gt $P.MessageChars){$m=$m.Substring(0,$P.MessageChars)};@{id=$_.Id;level=$_.Level;time=$_.TimeCreated.ToUniversalTime();message=$m}});$r.event_errors=@($v|%{Err $_})}catch{$r.event_errors=@(Err $_)}
[regex]::Replace((ConvertTo-Json -InputObject $r -Depth 5 -Compress),'[^\x00-\x7e]',{param($m)'\u{0:x4}' -f [int][char]$m.Value})
