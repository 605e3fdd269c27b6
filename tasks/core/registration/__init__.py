"""Registration: registry versions, their verification, champion promotion and the
fingerprints a score belongs to."""
