"""wordcount-api: counts the words of the text it is sent (a plain FastAPI service)."""

__version__ = "0.2.0"
