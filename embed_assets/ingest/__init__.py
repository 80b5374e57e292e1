"""Reading documents from a folder and cutting them into token-aware chunks."""
