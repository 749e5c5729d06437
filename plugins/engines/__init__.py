"""Built-in engine plugins: one module per engine, each registered by its own entry point."""
