"""The pygame client (not built yet). Never imports torch."""
