$ProgressPreference='SilentlyContinue';$ErrorActionPreference='Stop'
$r=@{schema=1;organization=$null;servers=@();error=$null};$g='snapin'
try{Microsoft.PowerShell.Core\Add-PSSnapin Microsoft.Exchange.Management.PowerShell.SnapIn
$g='organization';$r.organization=@{mitigations_enabled=(Get-OrganizationConfig).MitigationsEnabled}
$g='servers';$r.servers=@(Get-ExchangeServer|Microsoft.PowerShell.Core\ForEach-Object{@{name=$_.Name;fqdn=$_.Fqdn;roles=[string]$_.ServerRole;admin_display_version=[string]$_.AdminDisplayVersion;mitigations_enabled=$_.MitigationsEnabled;mitigations_applied=@($_.MitigationsApplied);mitigations_blocked=@($_.MitigationsBlocked);mitigations_applied_time=$_.MitigationsAppliedTime;data_collection_enabled=$_.DataCollectionEnabled;internet_web_proxy=[string]$_.InternetWebProxy}})}catch{$r.error=@{stage=$g;message="$_"}}
# ASCII only, without .NET calls (Constrained Language Mode): as collect_server.ps1 does.
(((Microsoft.PowerShell.Utility\ConvertTo-Json -InputObject $r -Depth 4 -Compress) -csplit '([^\x00-\x7e])')|Microsoft.PowerShell.Core\ForEach-Object{if($_.Length -eq 1 -and $_ -cmatch '[^\x00-\x7e]'){'\u{0:x4}' -f [int][char]$_}else{$_}}) -join ''
