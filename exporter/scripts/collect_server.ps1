$ProgressPreference='SilentlyContinue';$ErrorActionPreference='Stop'
# Constrained Language Mode (AppLocker/WDAC) allows methods only on core types: cmdlets and property reads here,
# .NET calls only inside the FullLanguage branch of the endpoint check (tests/unit/test_script_grammar.py checks).
$c=[Globalization.CultureInfo]::CurrentCulture;$lt=Microsoft.PowerShell.Utility\Get-Date;$n=@{}
$r=@{schema=1;computer=$env:COMPUTERNAME;now=[DateTime]::UtcNow;utc_offset_minutes=[int]($lt-$lt.ToUniversalTime()).TotalMinutes;language_mode=[string]$ExecutionContext.SessionState.LanguageMode;culture=@{name=$c.Name;ui=[Globalization.CultureInfo]::CurrentUICulture.Name;date=$c.DateTimeFormat.ShortDatePattern;time=$c.DateTimeFormat.LongTimePattern;am=$c.DateTimeFormat.AMDesignator;pm=$c.DateTimeFormat.PMDesignator};exsetup_version=$null;build_source=$null;edge=$false;component_states=$null;service_key=$null;service=$null;events=@();log_folder=$null;logs=@();errors=@();stages=@{}}
# The server's UTC offsets over the lookback, for culture log times written in local time (interpret.py reads each
# with the offset then in force): the offset at the window's start (on the minute), then each change with the offset
# after it, sampled daily and narrowed to the minute. DateTime.ToLocalTime converts by TimeZoneInfo.Local and its
# adjustment rules; Constrained Language Mode allows [datetime]'s methods, not TimeZoneInfo's (docs/design.md).
# Not yet run on a real server: should it throw, the list is left out, and Python reads every line with utc_offset_minutes.
try{function UtcOffset($u){[int]($u.ToLocalTime()-$u).TotalMinutes}
$a=[DateTime]::UtcNow.AddHours(-$P.LookbackHours);$a=$a.AddTicks(-($a.Ticks%600000000));$o=UtcOffset $a;$r.utc_offsets=@(@{since=$a;minutes=$o})
while($a -lt $r.now){$b=$a.AddDays(1);if($b -gt $r.now){$b=$r.now};if((UtcOffset $b) -ne $o){while(($b-$a).TotalMinutes -gt 1){$m=$a.AddMinutes([int](($b-$a).TotalMinutes/2));if((UtcOffset $m) -eq $o){$a=$m}else{$b=$m}};$o=UtcOffset $b;$r.utc_offsets+=@{since=$b;minutes=$o}};$a=$b}}catch{$r.utc_offsets=$null}
# Errors are recorded with their invariant FullyQualifiedErrorId; Python decides (never on the localized message).
# At most five per part, and how many in all (error_counts): a reader that keeps failing repeats its error, as
# Get-WinEvent writes each failed read and reads on (GetEventCommand.cs ReadEvents; PowerShell/PowerShell#10637).
function Fail($part,$e){$n[$part]=1+$n[$part];if($n[$part] -gt 5){return};$r.errors+=@{part=$part;id=[string]$e.FullyQualifiedErrorId;category=[string]$e.CategoryInfo.Category;type=[string]$e.Exception.pstypenames[0];inner=[string]@($e.Exception.InnerException.pstypenames)[0];message="$e"}}
# An empty FileVersion (an unreadable file) is no build: it throws, to the fallback and then to the errors.
$r.stages.build=(Microsoft.PowerShell.Utility\Measure-Command{try{$r.exsetup_version=(Microsoft.PowerShell.Core\Get-Command ExSetup.exe).FileVersionInfo.FileVersion;if(!$r.exsetup_version){throw 'ExSetup.exe has no FileVersion'};$r.build_source='exsetup'}catch{try{$i=(Microsoft.PowerShell.Management\Get-ItemProperty 'HKLM:\SOFTWARE\Microsoft\ExchangeServer\v15\Setup').MsiInstallPath;$r.exsetup_version=(Microsoft.PowerShell.Management\Get-Item (Microsoft.PowerShell.Management\Join-Path $i 'bin\ExSetup.exe')).VersionInfo.FileVersion;if(!$r.exsetup_version){throw 'ExSetup.exe has no FileVersion'};$r.build_source='registry'}catch{$r.exsetup_version=$null;Fail 'build' $_}}
$r.edge=Microsoft.PowerShell.Management\Test-Path 'HKLM:\SOFTWARE\Microsoft\ExchangeServer\v15\EdgeTransportRole'
# Maintenance mode: Set-ServerComponentState keeps a component's state per requester in the registry (this key, which
# CSS-Exchange's collectors dump) and in Active Directory (-RemoteOnly: AD alone, Learn). Its values' format is
# UNCONFIRMED: they are sent raw, and Python reads them (component_state.py).
try{$r.component_states=@(foreach($v in (Microsoft.PowerShell.Management\Get-ItemProperty -LiteralPath 'HKLM:\SOFTWARE\Microsoft\ExchangeServer\v15\ServerComponentStates\ServerWideOffline').PSObject.Properties){if($v.Name -cnotlike 'PS*'){@{component='ServerWideOffline';requester=$v.Name;value=[string]$v.Value}}})}catch{Fail 'component_state' $_}}).TotalSeconds
$r.stages.service=(Microsoft.PowerShell.Utility\Measure-Command{try{$r.service_key=@{start=(Microsoft.PowerShell.Management\Get-ItemProperty 'HKLM:\SYSTEM\CurrentControlSet\Services\MSExchangeMitigation').Start}}catch{Fail 'service_key' $_}
try{$s=Microsoft.PowerShell.Management\Get-Service MSExchangeMitigation;$r.service=@{status=[string]$s.Status;start_type=[string]$s.StartType}}catch{Fail 'service' $_}}).TotalSeconds
# One log with -FilterXPath: a denied Application log is LogInfoUnavailable, inner UnauthorizedAccessException (not
# "no events", as -FilterHashtable answers), and no provider lookup fails where EEMS is not registered. Newest first
# (Get-WinEvent reads in reverse unless -Oldest); the Event Log service skips other providers' records of the window
# and lets the first older record through, where Select-Object -First 1 stops the read: the cost follows the
# window's records, not the log's size. Insertion strings too: Message is null, with no error, when the text
# cannot be formatted (missing message file or locale).
$r.stages.events=(Microsoft.PowerShell.Utility\Measure-Command{try{$v=$null;$ms=3600000*$P.LookbackHours;$since=[DateTime]::UtcNow.AddHours(-$P.LookbackHours)
$q="*[System[(Provider[@Name='MSExchange Mitigation Service'] and TimeCreated[timediff(@SystemTime) <= $ms]) or TimeCreated[timediff(@SystemTime) > $ms]]]"
$null=Microsoft.PowerShell.Diagnostics\Get-WinEvent -LogName Application -FilterXPath $q -ErrorAction SilentlyContinue -ErrorVariable v|Microsoft.PowerShell.Core\ForEach-Object{if($_.ProviderName -eq 'MSExchange Mitigation Service' -and $_.TimeCreated.ToUniversalTime() -ge $since -and $r.events.Count -lt $P.MaxEvents){$r.events+=@{id=$_.Id;time=$_.TimeCreated.ToUniversalTime();message=$_.Message;data=@($_.Properties|Microsoft.PowerShell.Core\ForEach-Object{[string]$_.Value})}}else{$_}}|Microsoft.PowerShell.Utility\Select-Object -First 1
foreach($e in $v){Fail 'events' $e}}catch{Fail 'events' $_}}).TotalSeconds
# GUESS (EEMS log layout unconfirmed): the newest *.log files by write time hold the newest lines. Get-Content -Tail
# reads whole lines backward from the end (BOM-detected encoding, the file opened for shared write); the newest
# file is listed even with no budget left, its write time being evidence of activity (a lower bound: Microsoft
# documents that it may not move while EEMS holds the file open). LogTailBytes bounds the characters sent.
$r.stages.log=(Microsoft.PowerShell.Utility\Measure-Command{try{$d=Microsoft.PowerShell.Management\Join-Path $env:ExchangeInstallPath 'Logging\MitigationService';$r.log_folder=Microsoft.PowerShell.Management\Test-Path -LiteralPath $d
if($r.log_folder){$left=$P.LogTailBytes;$since=[DateTime]::UtcNow.AddHours(-$P.LookbackHours)
foreach($f in @(Microsoft.PowerShell.Management\Get-ChildItem -LiteralPath $d -Filter *.log -File|Microsoft.PowerShell.Utility\Sort-Object LastWriteTimeUtc -Descending|Microsoft.PowerShell.Utility\Select-Object -First 64)){$o=@{name=$f.Name;last_write=(Microsoft.PowerShell.Management\Get-Item -LiteralPath $f.FullName).LastWriteTimeUtc;tail=''}
if($left -gt 0){$t=@(Microsoft.PowerShell.Management\Get-Content -LiteralPath $f.FullName -Tail (1+[int]($left/64)) -Encoding UTF8);$k=$t.Count;$m=0
while($k -gt 0 -and $m+$t[$k-1].Length+2 -le $left){$k--;$m+=$t[$k].Length+2};if($k -lt $t.Count){$o.tail=$t[$k..($t.Count-1)] -join "`r`n"};if($m){$left-=$m}elseif($t.Count){$left=0}}
$r.logs+=$o;if($left -le 0 -or $f.LastWriteTimeUtc -lt $since){break}}}}catch{Fail 'log' $_}}).TotalSeconds
# The endpoint check needs .NET (revocation checking on, then off to tell a blocked CRL apart): in any other
# language mode it is not run, and says so once.
$r.stages.endpoint=(Microsoft.PowerShell.Utility\Measure-Command{if($P.CheckEndpoint){if($ExecutionContext.SessionState.LanguageMode -eq 'FullLanguage'){$p=$P.Proxy;$wp=$null
# WinHttpSettings: DWORD size, DWORD counter, DWORD flags (2 = proxy), DWORD length, proxy string (docs/design.md).
try{$w=(Microsoft.PowerShell.Management\Get-ItemProperty 'HKLM:\SOFTWARE\Microsoft\Windows\CurrentVersion\Internet Settings\Connections').WinHttpSettings;if($w.Length -ge 16 -and ($w[8] -band 2)){$wp=[Text.Encoding]::ASCII.GetString($w,16,[BitConverter]::ToInt32($w,12))}}catch{Fail 'winhttp' $_}
if(!$p -and $wp){$p=$wp;if($p -match 'https=([^;]+)'){$p=$matches[1]}elseif($p -match '='){$p=''};$p=$p.Split(';')[0];if($p -and $p -notmatch '://'){$p='http://'+$p}}
# The account's default credentials go to the proxy only when the exporter's configuration asks: the proxy may be
# the server's InternetWebProxy, which any Exchange server can set in Active Directory (issue 24 finding 17).
$ps=if($P.Proxy){'parameter'}elseif($p){'winhttp'}else{'none'};$pc=[bool]($p -and $P.ProxyDefaultCredentials)
[Net.ServicePointManager]::SecurityProtocol='Tls12';[Net.ServicePointManager]::CheckCertificateRevocationList=$true
$r.endpoints=@(foreach($u in 'GetExchangeMitigations','GetExchangeConfig'){$e=@{name=$u;status=0;ms=0;web_status=$null;error=$null;revocation_failed=$false;proxy=$p;proxy_source=$ps;proxy_credentials=$pc};$t=[Diagnostics.Stopwatch]::StartNew()
$a=@{Uri="https://officeclient.microsoft.com/$u";UseBasicParsing=$true;TimeoutSec=$P.EndpointTimeoutSec};if($p){$a.Proxy=$p;if($P.ProxyDefaultCredentials){$a.ProxyUseDefaultCredentials=$true}}
try{$e.status=[int](Microsoft.PowerShell.Utility\Invoke-WebRequest @a).StatusCode}catch{$e.error="$($_.Exception.Message)";$e.web_status=[string]$_.Exception.Status;if($_.Exception.Response){$e.status=[int]$_.Exception.Response.StatusCode}
if($e.web_status -eq 'TrustFailure'){[Net.ServicePointManager]::CheckCertificateRevocationList=$false;try{[void](Microsoft.PowerShell.Utility\Invoke-WebRequest @a);$e.revocation_failed=$true}catch{};[Net.ServicePointManager]::CheckCertificateRevocationList=$true}}
$e.ms=$t.ElapsedMilliseconds;$e})}else{$r.errors+=@{part='endpoint';id='ConstrainedLanguage';category='SecurityError';type='';message="the endpoint check needs FullLanguage; this session runs in $($ExecutionContext.SessionState.LanguageMode)"}}}}).TotalSeconds
$r.error_counts=$n
# ASCII only (every other character as \uXXXX): stdout is in the OEM code page. -csplit with a captured delimiter
# keeps each non-ASCII character as an element of its own (no .NET call, unlike [regex]::Replace with a script block).
# Case-sensitive operators: with IgnoreCase .NET lowers each character first, and U+212A or U+0130 lower to ASCII.
(((Microsoft.PowerShell.Utility\ConvertTo-Json -InputObject $r -Depth 5 -Compress) -csplit '([^\x00-\x7e])')|Microsoft.PowerShell.Core\ForEach-Object{if($_.Length -eq 1 -and $_ -cmatch '[^\x00-\x7e]'){'\u{0:x4}' -f [int][char]$_}else{$_}}) -join ''
