"""volsynth studio: a local web page to draw or upload a mask, write a report, generate and view the volume in 3D.

``volsynth studio`` serves it (``studio.commands``); ``studio.server.create_app`` builds the FastAPI app.
"""
