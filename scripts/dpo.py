"""Preference tuning (DPO, DPO-Positive, APO-zero, APO-down) on a pair config of a spanpref dataset repo.

    accelerate launch --config_file recipes/accelerate_configs/ddp.yaml scripts/dpo.py \
        --config recipes/smollm2-135m-instruct/dpo/config_stepwise_apo_down.yaml [--learning_rate 1e-6 ...]

The recipe sets everything; flags override it; unknown keys are errors. See spanpref.training.run.
"""

from spanpref.training.run import parse_args, train

if __name__ == "__main__":
    train("dpo", *parse_args("dpo"))
