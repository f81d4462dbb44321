"""Serving: the Ray Serve app (`ftray.serve.app`) and the stage that starts it
(`ftray.serve.stage`). Nothing is imported here, so a Serve replica's import of the app
loads only what the app needs.
"""
