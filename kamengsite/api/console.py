"""App keys in the member's account page and in the shop's console (a core plugin)."""
