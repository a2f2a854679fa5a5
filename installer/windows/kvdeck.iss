; Inno Setup 6.3+ script for KV Deck: a per-user install (no administrator prompt), a Start menu
; entry, and .gguf files opening in KV Deck. installer/build-windows.ps1 builds dist\kvdeck with
; PyInstaller first and passes the defines below; by hand:
;   iscc /DAppVersion=0.1.0 /DBundleDir=C:\src\kvdeck\dist\kvdeck /DIconFile=C:\src\kvdeck\build\icons\kvdeck.ico
;        /DOutputDir=C:\src\kvdeck\dist installer\windows\kvdeck.iss

#ifndef AppVersion
  #define AppVersion "0.0.0"
#endif
#ifndef BundleDir
  #define BundleDir "..\..\dist\kvdeck"
#endif
#ifndef IconFile
  #define IconFile "..\..\build\icons\kvdeck.ico"
#endif
#ifndef OutputDir
  #define OutputDir "..\..\dist"
#endif
#define ProgId "KVDeck.gguf"

[Setup]
; AppId identifies the install for upgrades and uninstall: never change it.
AppId={{6C0B3E52-8D1F-4A7E-9B35-2F4D7A1C9E60}
AppName=KV Deck
AppVersion={#AppVersion}
AppPublisher=KV Deck
AppComments=Chat with GGUF language models offline
; lowest privileges: {autopf} is %LOCALAPPDATA%\Programs and HKA is HKEY_CURRENT_USER
PrivilegesRequired=lowest
DefaultDirName={autopf}\KV Deck
DisableProgramGroupPage=yes
ArchitecturesAllowed=x64compatible
ArchitecturesInstallIn64BitMode=x64compatible
ChangesAssociations=yes
SetupIconFile={#IconFile}
UninstallDisplayIcon={app}\kvdeck.exe
OutputDir={#OutputDir}
OutputBaseFilename=kvdeck-setup-windows-x64-{#AppVersion}
; the GGUF model is most of the payload and barely compresses; lzma2 still shrinks Qt and Python
Compression=lzma2
SolidCompression=yes
WizardStyle=modern
; a running KV Deck holds its DLLs open: offer to close it before files are replaced
CloseApplications=yes

[Tasks]
Name: "desktopicon"; Description: "{cm:CreateDesktopIcon}"; GroupDescription: "{cm:AdditionalIcons}"; Flags: unchecked

[Files]
Source: "{#BundleDir}\*"; DestDir: "{app}"; Flags: ignoreversion recursesubdirs createallsubdirs

[InstallDelete]
; an upgrade must not mix old and new Python/Qt/llama.cpp files
Type: filesandordirs; Name: "{app}\_internal"

[Icons]
Name: "{autoprograms}\KV Deck"; Filename: "{app}\kvdeck.exe"
Name: "{autodesktop}\KV Deck"; Filename: "{app}\kvdeck.exe"; Tasks: desktopicon

[Registry]
; .gguf -> KVDeck.gguf -> "kvdeck.exe" "%1" (the app opens a model given as its first argument).
; OpenWithProgids puts KV Deck in "Open with" even when another program owns .gguf; Windows 10/11
; then asks the user once which one to use, by design: installers cannot set UserChoice.
Root: HKA; Subkey: "Software\Classes\.gguf"; ValueType: string; ValueName: ""; ValueData: "{#ProgId}"; Flags: uninsdeletevalue
Root: HKA; Subkey: "Software\Classes\.gguf\OpenWithProgids"; ValueType: string; ValueName: "{#ProgId}"; ValueData: ""; Flags: uninsdeletevalue
Root: HKA; Subkey: "Software\Classes\{#ProgId}"; ValueType: string; ValueName: ""; ValueData: "GGUF language model"; Flags: uninsdeletekey
Root: HKA; Subkey: "Software\Classes\{#ProgId}\DefaultIcon"; ValueType: string; ValueName: ""; ValueData: "{app}\kvdeck.exe,0"
Root: HKA; Subkey: "Software\Classes\{#ProgId}\shell\open\command"; ValueType: string; ValueName: ""; ValueData: """{app}\kvdeck.exe"" ""%1"""
Root: HKA; Subkey: "Software\Classes\Applications\kvdeck.exe\SupportedTypes"; ValueType: string; ValueName: ".gguf"; ValueData: ""; Flags: uninsdeletekey

[Run]
Filename: "{app}\kvdeck.exe"; Description: "{cm:LaunchProgram,KV Deck}"; Flags: nowait postinstall skipifsilent

; Chats and settings live in %LOCALAPPDATA%\kvdeck and are kept on uninstall on purpose.
