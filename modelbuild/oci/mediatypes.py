"""Media types and annotation keys of OCI and CNCF ModelPack (model-spec v1)."""

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MODEL_ARTIFACT = "application/vnd.cncf.model.manifest.v1+json"
MODEL_CONFIG = "application/vnd.cncf.model.config.v1+json"

# Artifacts written before model-spec moved to the CNCF (July 2025): read, never written.
LEGACY_MODEL_ARTIFACT = "application/vnd.cnai.model.manifest.v1+json"
LEGACY_MODEL_CONFIG = "application/vnd.cnai.model.config.v1+json"

ANNOTATION_FILEPATH = "org.cncf.model.filepath"
ANNOTATION_FILE_METADATA = "org.cncf.model.file.metadata+json"
ANNOTATION_MEDIATYPE_UNTESTED = "org.cncf.model.file.mediatype.untested"
ANNOTATION_TITLE = "org.opencontainers.image.title"
ANNOTATION_CREATED = "org.opencontainers.image.created"
LEGACY_ANNOTATION_FILEPATH = "org.cnai.model.filepath"


def layer_media_type(family: str, suffix: str) -> str:
    """``application/vnd.cncf.model.<family>.v1.<suffix>``, e.g. family ``weight``, suffix ``raw``."""
    return f"application/vnd.cncf.model.{family}.v1.{suffix}"


def is_model_manifest(doc: dict) -> bool:
    return doc.get("artifactType") in (MODEL_ARTIFACT, LEGACY_MODEL_ARTIFACT) or doc.get("config", {}).get(
        "mediaType"
    ) in (MODEL_CONFIG, LEGACY_MODEL_CONFIG)
