$ProgressPreference='SilentlyContinue';$ErrorActionPreference='Stop'
$c=[Globalization.CultureInfo]::CurrentCulture;$lt=Get-Date
$r=[ordered]@{schema=1;computer=$env:COMPUTERNAME;now=[DateTime]::UtcNow;utc_offset_minutes=[int]($lt-$lt.ToUniversalTime()).TotalMinutes;culture=@{name=$c.Name;ui=[Globalization.CultureInfo]::CurrentUICulture.Name;date=$c.DateTimeFormat.ShortDatePattern;time=$c.DateTimeFormat.LongTimePattern;am=$c.DateTimeFormat.AMDesignator;pm=$c.DateTimeFormat.PMDesignator};exsetup_version=$null;build_source=$null;edge=$false;service_key=$null;service=$null;events=@();log_folder=$null;logs=@();errors=@()}
function Fail($part,$e){$r.errors+=@{part=$part;id=[string]$e.FullyQualifiedErrorId;category=[string]$e.CategoryInfo.Category;type=$e.Exception.GetType().FullName;message="$e"}}
# An empty FileVersion (an unreadable file) is no build: it throws, to the fallback and then to the errors.
try{$r.exsetup_version=(Get-Command ExSetup.exe).FileVersionInfo.FileVersion;if(!$r.exsetup_version){throw 'ExSetup.exe has no FileVersion'};$r.build_source='exsetup'}catch{try{$i=(Get-ItemProperty 'HKLM:\SOFTWARE\Microsoft\ExchangeServer\v15\Setup').MsiInstallPath;$r.exsetup_version=(Get-Item (Join-Path $i 'bin\ExSetup.exe')).VersionInfo.FileVersion;if(!$r.exsetup_version){throw 'ExSetup.exe has no FileVersion'};$r.build_source='registry'}catch{$r.exsetup_version=$null;Fail 'build' $_}}
$r.edge=Test-Path 'HKLM:\SOFTWARE\Microsoft\ExchangeServer\v15\EdgeTransportRole'
try{$r.service_key=@{start=(Get-Item 'HKLM:\SYSTEM\CurrentControlSet\Services\MSExchangeMitigation').GetValue('Start')}}catch{Fail 'service_key' $_}
try{$s=Get-Service MSExchangeMitigation;$r.service=@{status=[string]$s.Status;start_type=[string]$s.StartType}}catch{Fail 'service' $_}
# Errors are recorded with their invariant FullyQualifiedErrorId; Python decides (never on the localized message).
# One log with -FilterXPath: a denied Application log throws UnauthorizedAccessException (-FilterHashtable tolerates
# query errors and answers "no events"), and no provider lookup fails where EEMS is not registered.
try{$v=$null;$q="*[System[Provider[@Name='MSExchange Mitigation Service'] and TimeCreated[timediff(@SystemTime) <= $(3600000*$P.LookbackHours)]]]"
$r.events=@(Get-WinEvent -LogName Application -FilterXPath $q -MaxEvents $P.MaxEvents -EA SilentlyContinue -ErrorVariable v|%{@{id=$_.Id;time=$_.TimeCreated.ToUniversalTime();message=$_.Message}});foreach($e in $v){Fail 'events' $e}}catch{Fail 'events' $_}
# GUESS (EEMS log layout unconfirmed): the newest *.log files by write time hold the newest lines. Get-Content -Tail
# reads whole lines backward from the end (BOM-detected encoding, the file opened for shared write); the newest
# file is listed even with no budget left, its write time being evidence of activity (a lower bound: Microsoft
# documents that it may not move while EEMS holds the file open). LogTailBytes bounds the characters sent.
try{$d=Join-Path $env:ExchangeInstallPath 'Logging\MitigationService';$r.log_folder=Test-Path -LiteralPath $d
if($r.log_folder){$left=$P.LogTailBytes;$since=[DateTime]::UtcNow.AddHours(-$P.LookbackHours)
foreach($f in @(Get-ChildItem -LiteralPath $d -Filter *.log -File|sort LastWriteTimeUtc -Descending|select -First 64)){$o=@{name=$f.Name;last_write=(Get-Item -LiteralPath $f.FullName).LastWriteTimeUtc;tail=''}
if($left -gt 0){$t=@(Get-Content -LiteralPath $f.FullName -Tail (1+[int]($left/64)) -Encoding UTF8);$k=$t.Count;$n=0
while($k -gt 0 -and $n+$t[$k-1].Length+2 -le $left){$k--;$n+=$t[$k].Length+2};if($k -lt $t.Count){$o.tail=$t[$k..($t.Count-1)] -join "`r`n"};if($n){$left-=$n}elseif($t.Count){$left=0}}
$r.logs+=$o;if($left -le 0 -or $f.LastWriteTimeUtc -lt $since){break}}}}catch{Fail 'log' $_}
if($P.CheckEndpoint){$p=$P.Proxy;$wp=$null
# GUESS: WinHttpSettings = DWORD size, DWORD counter, DWORD flags (2 = proxy), DWORD length, proxy string.
try{$w=(Get-ItemProperty 'HKLM:\SOFTWARE\Microsoft\Windows\CurrentVersion\Internet Settings\Connections').WinHttpSettings;if($w.Length -ge 16 -and ($w[8] -band 2)){$wp=[Text.Encoding]::ASCII.GetString($w,16,[BitConverter]::ToInt32($w,12))}}catch{Fail 'winhttp' $_}
if(!$p -and $wp){$p=$wp;if($p -match 'https=([^;]+)'){$p=$matches[1]}elseif($p -match '='){$p=''};$p=$p.Split(';')[0];if($p -and $p -notmatch '://'){$p='http://'+$p}}
[Net.ServicePointManager]::SecurityProtocol='Tls12';[Net.ServicePointManager]::CheckCertificateRevocationList=$true
$r.endpoints=@(foreach($u in 'GetExchangeMitigations','GetExchangeConfig'){$e=@{name=$u;status=0;ms=0;web_status=$null;error=$null;revocation_failed=$false};$t=[Diagnostics.Stopwatch]::StartNew()
$a=@{Uri="https://officeclient.microsoft.com/$u";UseBasicParsing=$true;TimeoutSec=$P.EndpointTimeoutSec};if($p){$a.Proxy=$p;$a.ProxyUseDefaultCredentials=$true}
try{$e.status=[int](Invoke-WebRequest @a).StatusCode}catch{$e.error="$($_.Exception.Message)";$e.web_status=[string]$_.Exception.Status;if($_.Exception.Response){$e.status=[int]$_.Exception.Response.StatusCode}
if($e.web_status -eq 'TrustFailure'){[Net.ServicePointManager]::CheckCertificateRevocationList=$false;try{[void](Invoke-WebRequest @a);$e.revocation_failed=$true}catch{};[Net.ServicePointManager]::CheckCertificateRevocationList=$true}}
$e.ms=$t.ElapsedMilliseconds;$e})}
[regex]::Replace((ConvertTo-Json -InputObject $r -Depth 4 -Compress),'[^\x00-\x7e]',{param($m)'\u{0:x4}' -f [int][char]$m.Value})
