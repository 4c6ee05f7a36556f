"""orthokit.diagnostics (under construction in this change; the integrator writes the public re-exports)."""
