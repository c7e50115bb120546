"""yibu-middleware: send unmodified OpenAI/Anthropic apps through the yibu relay gateway."""
