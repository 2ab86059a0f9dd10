@_exported import WBCore
