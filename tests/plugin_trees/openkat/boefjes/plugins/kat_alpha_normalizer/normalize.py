def run(input_ooi: dict, raw: bytes) -> list:
    return []
