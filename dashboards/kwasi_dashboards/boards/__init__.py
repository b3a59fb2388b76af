"""One module per dashboard; `runtime` holds what the three runtime dashboards share."""
