<#
.SYNOPSIS
Registers, updates or removes the exchange-eems-exporter JEA endpoint on this server. Safe to run again.

.DESCRIPTION
Run as an administrator on each Exchange server, from the folder `exchange-eems-exporter windows-endpoint`
wrote (or deploy the same steps with GPO, DSC or Ansible). It copies the ExchangeEemsExporter module (which
holds the role capability) to Program Files and registers the session configuration ExchangeEemsExporter
from ExchangeEemsExporter.pssc. A second run with the same files changes nothing. With other files (a newer
exporter) it replaces the module and registers the configuration again; registering restarts the WinRM
service, so open remote sessions to this server end: run it in a local session, not over PowerShell remoting.
Registering a configuration with RunAsVirtualAccount also makes the WinRM service run in its own process as
LocalSystem (PowerShell's CustomShellCommands.cs, MoveWinRmToIsolatedServiceHost); -Remove does not undo that. -Remove takes both away. With a TranscriptDirectory
it creates that folder for SYSTEM and Administrators only; -Remove leaves the transcripts. On a domain controller it
refuses a configuration without RunAsVirtualAccountGroups (its virtual account would be in Domain Admins).

.PARAMETER Remove
Unregister the session configuration and delete the module.

.PARAMETER AllowWeaker
Update an endpoint registered with RunAsVirtualAccountGroups or a TranscriptDirectory from files written without
them or with other groups, or one whose registered configuration file cannot be read to compare. Without it the
script refuses such an update before it changes anything: the virtual account could become a member of the local
Administrators group, or of other groups, or sessions would no longer be recorded.

.EXAMPLE
.\Install-ExchangeEemsEndpoint.ps1
.\Install-ExchangeEemsEndpoint.ps1 -Remove
#>
[CmdletBinding()]
param(
    [switch]$Remove,
    [switch]$AllowWeaker
)
$ErrorActionPreference = 'Stop'
$Name = 'ExchangeEemsExporter'
$Source = Join-Path $PSScriptRoot $Name
$Target = Join-Path $env:ProgramFiles "WindowsPowerShell\Modules\$Name"
$SessionFile = Join-Path $PSScriptRoot "$Name.pssc"

function Get-FolderDigest([string]$Path) {
    # One line per file, relative name and SHA-256: equal digests = equal folders. '' for a missing folder.
    if (-not (Test-Path -LiteralPath $Path)) { return '' }
    $root = (Resolve-Path -LiteralPath $Path).ProviderPath
    $lines = foreach ($file in Get-ChildItem -LiteralPath $root -Recurse -File | Sort-Object FullName) {
        '{0} {1}' -f $file.FullName.Substring($root.Length), (Get-FileHash -LiteralPath $file.FullName -Algorithm SHA256).Hash
    }
    return ($lines -join "`n")
}

function Get-FileDigest([string]$Path) {
    if (-not $Path -or -not (Test-Path -LiteralPath $Path)) { return '' }
    return (Get-FileHash -LiteralPath $Path -Algorithm SHA256).Hash
}

if ($PSVersionTable.PSVersion.Major -lt 5) {
    throw 'JEA needs Windows PowerShell 5.1 (Windows Management Framework 5.1).'
}
# A 32-bit Windows PowerShell on 64-bit Windows sees $env:ProgramFiles as 'C:\Program Files (x86)' (Microsoft Learn,
# "WOW64 Implementation Details"): the module would go where the endpoint's 64-bit session does not look for role
# capabilities (its PSModulePath has $env:ProgramFiles\WindowsPowerShell\Modules). The process asks .NET about itself
# (Environment.Is64BitProcess), not PROCESSOR_ARCHITEW6432, which a child of a 32-bit process may inherit.
if (-not [Environment]::Is64BitProcess) {
    throw 'This is a 32-bit Windows PowerShell: run the script in the 64-bit one. Nothing changed.'
}
$Registered = Get-PSSessionConfiguration -Name $Name -ErrorAction SilentlyContinue

if ($Remove) {
    if ($Registered) {
        Unregister-PSSessionConfiguration -Name $Name -Force
        Write-Output "Unregistered the session configuration $Name."
    }
    if (Test-Path -LiteralPath $Target) {
        Remove-Item -LiteralPath $Target -Recurse -Force
        Write-Output "Removed $Target."
    }
    Write-Output "The $Name endpoint is not installed."
    return
}

if (-not (Test-Path -LiteralPath $Source) -or -not (Test-Path -LiteralPath $SessionFile)) {
    throw "Run this script from the folder windows-endpoint wrote: $Source and $SessionFile are needed."
}
# Test-PSSessionConfigurationFile has no -LiteralPath and resolves -Path as a wildcard ("Wildcard characters are
# supported", Microsoft Learn, Test-PSSessionConfigurationFile; GetResolvedProviderPathFromPSPath in PowerShell's
# TestPSSessionConfigurationFile.cs): a folder like 'endpoint[1]' would not be found. Escape * ? [ ] and ` with a
# backtick (about_Wildcards); not [WildcardPattern]::Escape, which is no core type in 5.1's Constrained Language.
if (-not (Test-PSSessionConfigurationFile -Path ($SessionFile -replace '([*?`\[\]])', '`$1'))) {
    throw "$SessionFile is not a valid session configuration file."
}
$Settings = Import-PowerShellDataFile -LiteralPath $SessionFile

# Without RunAsVirtualAccountGroups the virtual account is a member of Administrators, and on a domain controller
# of Domain Admins (Microsoft Learn, "JEA Security Considerations", Run-As account). A read-only function must not
# run as a domain administrator: refuse. DomainRole 4 and 5 are the backup and primary domain controller
# (Microsoft Learn, "Win32_ComputerSystem class").
$DomainRole = (Get-CimInstance -ClassName Win32_ComputerSystem).DomainRole
if ($DomainRole -ge 4 -and -not $Settings.RunAsVirtualAccountGroups) {
    throw ("This server is a domain controller: the endpoint's virtual account would be a member of Domain Admins. " +
        "Write the endpoint again with --virtual-account-group naming the domain groups it may use, then run this script.")
}

# An update must not quietly widen the endpoint. Written again without the --virtual-account-group or
# --transcript-directory the registered one has (the endpoint_outdated hint is followed literally), the virtual account
# would become a member of the local Administrators group ("JEA Security Considerations", Run-As account) or sessions
# would go unrecorded. The registered configuration is the copy Register-PSSessionConfiguration kept (ConfigFilePath).
if ($Registered -and -not $AllowWeaker) {
    # Unread, the registered options cannot be compared: refuse rather than skip the comparison. Import-PowerShellDataFile
    # reports a file it cannot parse as a non-terminating error, which -ErrorAction Stop makes terminating.
    $Before = $null
    try {
        $Before = Import-PowerShellDataFile -LiteralPath $Registered.ConfigFilePath -ErrorAction Stop
    } catch {
        $Before = $null
    }
    if (-not $Before) {
        throw ("The registered $Name endpoint's configuration file ('$($Registered.ConfigFilePath)') cannot be read, so " +
            "its options cannot be compared with these files'. Run this script with -AllowWeaker to update it anyway. Nothing changed.")
    }
    $Lost = @()
    $Was = (@($Before.RunAsVirtualAccountGroups) | Sort-Object) -join "', '"
    $Now = (@($Settings.RunAsVirtualAccountGroups) | Sort-Object) -join "', '"
    if ($Before.RunAsVirtualAccountGroups -and $Was -ne $Now) {
        $Lost += "the virtual-account groups '$Was' (these files have '$Now'; without any the virtual account is a local Administrator)"
    }
    if ($Before.TranscriptDirectory -and -not $Settings.TranscriptDirectory) {
        $Lost += "--transcript-directory '$($Before.TranscriptDirectory)' (without it no session is recorded)"
    }
    if ($Lost.Count -gt 0) {
        throw ("The registered $Name endpoint was written with options these files lack or change: " + ($Lost -join '; ') +
            ". Write the endpoint again with them, or run this script with -AllowWeaker if the change is meant. Nothing changed.")
    }
}

# Windows PowerShell 5.1 wraps an argument with a space in double quotes without doubling a trailing backslash, so
# icacls would read 'C:\EEMS Transcripts\' as `C:\EEMS Transcripts" /reset /T /Q` (PowerShell issues 4358, 7400;
# NativeCommandParameterBinder.cs); and a drive root would get /reset /T on the whole drive. Refuse before any change.
if ($Settings.TranscriptDirectory -match '\\$') {
    throw "TranscriptDirectory '$($Settings.TranscriptDirectory)' ends with '\': write the endpoint again without it."
}

$Changed = $false
if ((Get-FolderDigest $Source) -ne (Get-FolderDigest $Target)) {
    if (Test-Path -LiteralPath $Target) {
        Remove-Item -LiteralPath $Target -Recurse -Force
    }
    Copy-Item -LiteralPath $Source -Destination $Target -Recurse -Force
    Write-Output "Installed the module $Name in $Target."
    $Changed = $true
}
# Transcripts are written by Local System, and standard users should have no access to their folder (Microsoft
# Learn, "JEA Session Configurations", Session transcripts): SYSTEM and Administrators only, nothing inherited.
# icacls /reset /T leaves only inherited entries (on the folder and what it holds), then /inheritance:r drops
# those and /grant:r sets these two (Microsoft Learn, "icacls").
$Transcripts = $Settings.TranscriptDirectory
if ($Transcripts) {
    if (-not (Test-Path -LiteralPath $Transcripts)) {
        New-Item -ItemType Directory -Path $Transcripts -Force | Out-Null
        Write-Output "Created the transcript folder $Transcripts."
        $Changed = $true
    }
    # UNCONFIRMED on a server: the exact SDDL icacls leaves; if it differs, icacls only runs again on the next run.
    $TranscriptDacl = ((Get-Acl -LiteralPath $Transcripts).Sddl -split 'D:', 2)[1]
    if ($TranscriptDacl -cnotmatch '^P[A-Z]*(\(A;OICI;FA;;;(SY|BA)\)){2}$') {
        # icacls reaches everything below: only a folder of transcripts, never one that exists for other things
        # (C:\ProgramData, a shared log folder) named by mistake. UNCONFIRMED whether JEA writes a folder per day
        # (yyyyMMdd, as system-wide transcription does) or the PowerShell_transcript.*.txt files directly: both pass.
        $Foreign = @(foreach ($Entry in Get-ChildItem -LiteralPath $Transcripts -Force) {
            if (-not (($Entry.PSIsContainer -and $Entry.Name -match '^\d{8}$') -or
                (-not $Entry.PSIsContainer -and $Entry.Name -match '^PowerShell_transcript\..+\.txt$'))) { $Entry } })
        if ($Foreign.Count -gt 0) {
            throw ("$Transcripts holds $($Foreign.Count) entries that are not transcript folders, such as " +
                "$($Foreign[0].Name): name a folder of the endpoint's own as the transcript directory.")
        }
        icacls.exe $Transcripts /reset /T /Q | Out-Null
        if ($LASTEXITCODE -ne 0) { throw "icacls could not reset $Transcripts (exit code $LASTEXITCODE)." }
        icacls.exe $Transcripts /inheritance:r /grant:r '*S-1-5-18:(OI)(CI)F' '*S-1-5-32-544:(OI)(CI)F' | Out-Null
        if ($LASTEXITCODE -ne 0) { throw "icacls could not restrict $Transcripts (exit code $LASTEXITCODE)." }
        Write-Output "Restricted $Transcripts to SYSTEM and Administrators."
        $Changed = $true
    }
}
# Registering copies the .pssc; the copy's path is ConfigFilePath. An equal copy means nothing to register.
$Current = $Registered -and ((Get-FileDigest $Registered.ConfigFilePath) -eq (Get-FileDigest $SessionFile))
if (-not $Current) {
    if ($Registered) {
        Unregister-PSSessionConfiguration -Name $Name -Force
    }
    Register-PSSessionConfiguration -Name $Name -Path $SessionFile -Force | Out-Null
    Write-Output "Registered the session configuration $Name (the WinRM service restarted)."
    $Changed = $true
}
if (-not $Changed) {
    Write-Output "The $Name endpoint is up to date; nothing changed."
}
