"""The study's command-line tools (run, kinds, portable, signals, scoreboard); each also runs as a file."""
