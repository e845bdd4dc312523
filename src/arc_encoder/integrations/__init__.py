"""Adapters for the frameworks users already run, all speaking to `arc-encoder serve` (or to a
BackgroundServer in this process) through its OpenAI-compatible routes: `client` (httpx only),
`langchain` (extra `langchain`), `llamaindex` (extra `llamaindex`). docs/integrations.md shows each."""
