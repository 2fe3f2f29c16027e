"""The span_agreement `evaluate` module (a package too, so that installs from a wheel ship its file)."""
