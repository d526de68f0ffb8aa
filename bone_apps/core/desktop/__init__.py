"""What the desktop apps need from the core without Qt: the start log and the shortcuts."""
