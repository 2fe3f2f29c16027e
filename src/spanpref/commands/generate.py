"""`spanpref generate queries | responses`: a model writes queries for documents, then responses to them."""

from __future__ import annotations

from dataclasses import dataclass

from spanpref.backends.base import GenerationConfig
from spanpref.backends.config import BackendConfig
from spanpref.commands.base import command, option
from spanpref.generate import QueryGenerationConfig, ResponseGenerationConfig


@dataclass(kw_only=True)
class QueriesFolder:
    folder: str = option("dataset repo folder with a documents config", positional=True)


@dataclass(kw_only=True)
class ResponsesFolder:
    folder: str = option("dataset repo folder with documents and queries configs", positional=True)


@command(
    "generate queries",
    "write N demanding queries per document",
    QueriesFolder,
    BackendConfig,
    GenerationConfig,
    QueryGenerationConfig,
    defaults={"temperature": 0.7, "top_p": 0.95, "max_new_tokens": 512},
)
def queries(where: QueriesFolder, backend: BackendConfig, gen: GenerationConfig, cfg: QueryGenerationConfig) -> None:
    from spanpref.generate import generate_queries

    print(generate_queries(where.folder, backend.build(), gen, cfg).summary())


@command(
    "generate responses",
    "sample K independent responses per query",
    ResponsesFolder,
    BackendConfig,
    GenerationConfig,
    ResponseGenerationConfig,
    defaults={"temperature": 0.8, "top_p": 0.95, "max_new_tokens": 512},
)
def responses(
    where: ResponsesFolder, backend: BackendConfig, gen: GenerationConfig, cfg: ResponseGenerationConfig
) -> None:
    from spanpref.generate import generate_responses

    print(generate_responses(where.folder, backend.build(), gen, cfg).summary())


COMMANDS = [queries, responses]
