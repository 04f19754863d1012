"""`novamlx-gateway tray`: a menu bar / system tray icon over a running server.

model.py polls the server and says what the menu shows (toolkit-free, unit-tested against a
live gateway); app.py draws it with rumps on macOS and pystray elsewhere.
"""
