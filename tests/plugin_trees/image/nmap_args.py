def build_args(boefje_meta: dict) -> list[str]:
    return ["nmap", *boefje_meta.get("arguments", {}).get("oci_arguments", [])]
