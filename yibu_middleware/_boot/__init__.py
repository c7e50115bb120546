"""Start-up paths that switch the middleware on without touching the app's code."""
