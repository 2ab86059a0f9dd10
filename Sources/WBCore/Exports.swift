// WBCore is the vocabulary every other module speaks: the process model, the image format
// and (re-exported) the error type and system helpers.
@_exported import WBSystem
