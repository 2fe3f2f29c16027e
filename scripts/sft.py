"""Supervised fine-tuning on the full rewrites (a*) of a spanpref dataset repo (config sft_full_rewrite).

    accelerate launch --config_file recipes/accelerate_configs/ddp.yaml scripts/sft.py \
        --config recipes/smollm2-135m-instruct/sft/config_full_rewrite.yaml

The recipe sets everything; flags override it; unknown keys are errors. See spanpref.training.run.
"""

from spanpref.training.run import parse_args, train

if __name__ == "__main__":
    train("sft", *parse_args("sft"))
