"""The same-origin gateway that serves the web page (ui/) and forwards its predictions to TorchServe."""
