"""dalimix's command lines, installed as the package `dalimix_scripts` (console commands dalimix-train,
dalimix-profile, dalimix-preview); each also runs as `python scripts/<name>.py`. Nothing imports these."""
