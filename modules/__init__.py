"""Resource kinds, one per file, and the contract they follow (``modules.base``)."""
