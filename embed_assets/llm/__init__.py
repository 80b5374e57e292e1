"""The LLM side, shared by question generation, the judge and ragas faithfulness: the litellm
client with rate limits and retries (``client``), the durable response cache (``cache``) and the
pydantic schemas of structured output (``schemas``)."""
