"""The small core every layer may use: the error type, the typed config loader, model loading,
sampling and image helpers.  It imports no other package of the project."""
