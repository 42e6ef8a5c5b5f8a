"""What the CLI shows on a terminal: tables, JSON, CSV and progress bars."""
