"""Engine plugin (being written)."""
