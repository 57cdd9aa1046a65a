$ProgressPreference='SilentlyContinue';$ErrorActionPreference='Stop'
# Runs in Constrained Language Mode too: .NET calls only in FullLanguage branches; what needs them is then null,
# and language_mode says why (docs/field-report.md).
function Err($x){@{id=[string]$x.FullyQualifiedErrorId;type=[string]$x.Exception.pstypenames[0];inner=[string]@($x.Exception.InnerException.pstypenames)[0];message="$x"}}
$lt=Microsoft.PowerShell.Utility\Get-Date
$r=@{schema=1;computer=$env:COMPUTERNAME;now=[DateTime]::UtcNow;utc_offset_minutes=[int]($lt-$lt.ToUniversalTime()).TotalMinutes;language_mode=[string]$ExecutionContext.SessionState.LanguageMode;powershell=[string]$PSVersionTable.PSVersion;culture=$null;ui_culture=$null;is_admin=$null;exsetup_version=$null;winhttp_settings=$null;service=$null;service_key=$null;service_sddl=$null;log_folder=$null;log_files=@();events=@();event_errors=@();event_error_count=$null;event_query_seconds=$null;errors=@()}
# The server's UTC offsets over the lookback, as collect_server.ps1 sends them (the same lines; the field report
# reads log times with them as the poll does). Should it throw, the list is null and every line is read with
# utc_offset_minutes.
try{function UtcOffset($u){[int]($u.ToLocalTime()-$u).TotalMinutes}
$a=[DateTime]::UtcNow.AddHours(-$P.LookbackHours);$a=$a.AddTicks(-($a.Ticks%600000000));$o=UtcOffset $a;$r.utc_offsets=@(@{since=$a;minutes=$o})
while($a -lt $r.now){$b=$a.AddDays(1);if($b -gt $r.now){$b=$r.now};if((UtcOffset $b) -ne $o){while(($b-$a).TotalMinutes -gt 1){$m=$a.AddMinutes([int](($b-$a).TotalMinutes/2));if((UtcOffset $m) -eq $o){$a=$m}else{$b=$m}};$o=UtcOffset $b;$r.utc_offsets+=@{since=$b;minutes=$o}};$a=$b}}catch{$r.utc_offsets=$null}
try{$r.culture=(Microsoft.PowerShell.Utility\Get-Culture).Name;$r.ui_culture=(Microsoft.PowerShell.Utility\Get-UICulture).Name}catch{$r.errors+=Err $_}
if($ExecutionContext.SessionState.LanguageMode -eq 'FullLanguage'){try{$r.is_admin=([Security.Principal.WindowsPrincipal][Security.Principal.WindowsIdentity]::GetCurrent()).IsInRole([Security.Principal.WindowsBuiltInRole]::Administrator)}catch{$r.errors+=Err $_}}
try{$r.exsetup_version=(Microsoft.PowerShell.Core\Get-Command ExSetup.exe).FileVersionInfo.FileVersion}catch{$r.errors+=Err $_}
if($ExecutionContext.SessionState.LanguageMode -eq 'FullLanguage'){try{$r.winhttp_settings=[Convert]::ToBase64String((Microsoft.PowerShell.Management\Get-ItemProperty 'HKLM:\SOFTWARE\Microsoft\Windows\CurrentVersion\Internet Settings\Connections').WinHttpSettings)}catch{$r.winhttp_settings=@{error=Err $_}}}
try{$s=Microsoft.PowerShell.Management\Get-Service MSExchangeMitigation;$r.service=@{status=[string]$s.Status;start_type=[string]$s.StartType}}catch{$r.service=@{error=Err $_}}
try{$k=Microsoft.PowerShell.Management\Get-ItemProperty 'HKLM:\SYSTEM\CurrentControlSet\Services\MSExchangeMitigation';$r.service_key=@{start=$k.Start;account=[string]$k.ObjectName}}catch{$r.service_key=@{error=Err $_}}
# Maintenance mode twice, to confirm the poll's reading (exporter/component_state.py): the registry's ServerWideOffline
# values read by the collection script's own expression, and Exchange's own view, Get-ServerComponentState's LocalStates (the
# snap-in reaches Active Directory: over NTLM the double hop fails it, and the report says so).
try{$r.component_states=@(foreach($v in (Microsoft.PowerShell.Management\Get-ItemProperty -LiteralPath 'HKLM:\SOFTWARE\Microsoft\ExchangeServer\v15\ServerComponentStates\ServerWideOffline').PSObject.Properties){if($v.Name -cnotlike 'PS*'){@{component='ServerWideOffline';requester=$v.Name;value=[string]$v.Value}}})}catch{$r.component_states=@{error=Err $_}}
try{Microsoft.PowerShell.Core\Add-PSSnapin Microsoft.Exchange.Management.PowerShell.SnapIn;$c=Get-ServerComponentState -Identity $env:COMPUTERNAME -Component ServerWideOffline
$r.server_component_state=@{state=[string]$c.State;local=@($c.LocalStates|Microsoft.PowerShell.Core\ForEach-Object{@{requester=[string]$_.Requester;state=[string]$_.State;time=$_.Timestamp}});remote=@($c.RemoteStates|Microsoft.PowerShell.Core\ForEach-Object{@{requester=[string]$_.Requester;state=[string]$_.State;time=$_.Timestamp}})}}catch{$r.server_component_state=@{error=Err $_}}
# The service's and the log folder's security descriptors (docs/windows-setup.md, F5 and F9), as SDDL: sc.exe prints
# its own (localized) text when it may not read one, with the Win32 error as its exit code.
try{$o=@(& "$env:SystemRoot\System32\sc.exe" sdshow MSExchangeMitigation|Microsoft.PowerShell.Utility\Select-Object -First 8);$r.service_sddl=@{exit=$LASTEXITCODE;output=((@($o|Microsoft.PowerShell.Core\ForEach-Object{[string]$_ -replace '^\s+|\s+$',''}) -ne '') -join ' ')}}catch{$r.service_sddl=@{error=Err $_}}
# Per file the directory entry's write time (Get-ChildItem) and the file's own (Get-Item): they differ while EEMS
# holds a file open if NTFS lags the directory entry, and neither may move until it is closed (review R3).
try{$d=Microsoft.PowerShell.Management\Join-Path $env:ExchangeInstallPath 'Logging\MitigationService';$r.log_folder=@{path=$d;exists=(Microsoft.PowerShell.Management\Test-Path $d)}
if($r.log_folder.exists){try{$r.log_folder.sddl=(Microsoft.PowerShell.Security\Get-Acl -LiteralPath $d).Sddl}catch{$r.log_folder.sddl=@{error=Err $_}}
$a=@(Microsoft.PowerShell.Management\Get-ChildItem $d -File|Microsoft.PowerShell.Utility\Sort-Object LastWriteTimeUtc -Descending);$r.log_folder.file_count=$a.Count;$i=0
$r.log_files=@($a|Microsoft.PowerShell.Utility\Select-Object -First $P.ListFiles|Microsoft.PowerShell.Core\ForEach-Object{$o=@{name=$_.Name;length=$_.Length;last_write=$_.LastWriteTimeUtc;file_last_write=(Microsoft.PowerShell.Management\Get-Item -LiteralPath $_.FullName).LastWriteTimeUtc}
if($ExecutionContext.SessionState.LanguageMode -eq 'FullLanguage'){if($i++ -lt $P.ReadFiles){try{$s=[IO.File]::Open($_.FullName,'Open','Read','ReadWrite,Delete');try{$o.stream_length=$s.Length
$n=[Math]::Min($s.Length,$P.HeadBytes);$b=Microsoft.PowerShell.Utility\New-Object byte[] $n;$n=$s.Read($b,0,$n);$o.head=[Convert]::ToBase64String($b,0,$n)
$n=[Math]::Min($s.Length,$P.TailBytes);[void]$s.Seek(-$n,'End');$b=Microsoft.PowerShell.Utility\New-Object byte[] $n;$n=$s.Read($b,0,$n);$o.tail=[Convert]::ToBase64String($b,0,$n)}finally{$s.Close()}}catch{$o.error=Err $_}}};$o})}}catch{$r.log_folder=@{error=Err $_}}
# The collection script's query (newest first, stopped at the first record older than the window), timed, with
# each event's insertion strings (what a 1008 is classified on when its message cannot be formatted), and the first
# 20 of its error records with their count (a reader that keeps failing repeats its error, review R11).
$r.event_query_seconds=(Microsoft.PowerShell.Utility\Measure-Command{try{$v=$null;$ms=3600000*$P.LookbackHours;$since=[DateTime]::UtcNow.AddHours(-$P.LookbackHours)
$q="*[System[(Provider[@Name='MSExchange Mitigation Service'] and TimeCreated[timediff(@SystemTime) <= $ms]) or TimeCreated[timediff(@SystemTime) > $ms]]]"
$null=Microsoft.PowerShell.Diagnostics\Get-WinEvent -LogName Application -FilterXPath $q -ErrorAction SilentlyContinue -ErrorVariable v|Microsoft.PowerShell.Core\ForEach-Object{if($_.ProviderName -eq 'MSExchange Mitigation Service' -and $_.TimeCreated.ToUniversalTime() -ge $since -and $r.events.Count -lt $P.MaxEvents){$m=$_.Message;if($m -and $m.Length -gt $P.MessageChars){$m=$m.Substring(0,$P.MessageChars)}
$r.events+=@{id=$_.Id;level=$_.Level;time=$_.TimeCreated.ToUniversalTime();message=$m;data=@($_.Properties|Microsoft.PowerShell.Core\ForEach-Object{$t=[string]$_.Value;if($t.Length -gt $P.MessageChars){$t=$t.Substring(0,$P.MessageChars)};$t})}}else{$_}}|Microsoft.PowerShell.Utility\Select-Object -First 1
$r.event_errors=@($v|Microsoft.PowerShell.Utility\Select-Object -First 20|Microsoft.PowerShell.Core\ForEach-Object{Err $_});$r.event_error_count=$v.Count}catch{$r.event_errors=@(Err $_)}}).TotalSeconds
(((Microsoft.PowerShell.Utility\ConvertTo-Json -InputObject $r -Depth 5 -Compress) -csplit '([^\x00-\x7e])')|Microsoft.PowerShell.Core\ForEach-Object{if($_.Length -eq 1 -and $_ -cmatch '[^\x00-\x7e]'){'\u{0:x4}' -f [int][char]$_}else{$_}}) -join ''
