"""OCI data structures: media types, references, and image-layout export."""
