"""What stages hand each other: output folders that own their file names, and JSON contracts."""
