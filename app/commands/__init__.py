"""``faust -A app COMMAND``: operators' commands, one module each; found by autodiscovery.

Modules here import the app instance and register with ``@app.command``; keep their
heavy imports inside the command so that a worker's autodiscovery stays cheap.
"""
