"""`edgeslim serve FILE`: an OpenAI-compatible local server, a chat page, one model shared fairly.

Built on starlette (routing, requests) and uvicorn (HTTP), the `serve` extra;
the rest of the runtime imports without them.

    config.py     ServerConfig: the limits (body size, messages, queue, time) and identity
    errors.py     APIError: OpenAI's JSON error shape with the right status code
    schemas.py    request JSON -> validated ChatRequest / CompletionRequest (400 on any mistake)
    scheduler.py  Job, the fair bounded queue (round robin over clients), the generation thread
    respond.py    ASGI responses that follow a Job: whole JSON or server-sent events, stopping
                  the generation when the client disconnects
    render.py     OpenAI response / chunk objects
    routes.py     the endpoints; app.py builds the Starlette app (auth, errors, static page)
    cli.py        argument parsing and the checks done before binding (file, memory, port)
    static/       the chat page served at / (no external resources)

The generation thread decodes up to `--parallel` requests together (runtime/batch.py:
one batched forward per token, per-request attention and sampling) and admits waiting
requests round robin over clients (`user` field, else the API key, else the peer
address), so one busy client cannot starve another; a queue with a bounded length
answers 503 (or 429 for one client over its share) when full.
"""
