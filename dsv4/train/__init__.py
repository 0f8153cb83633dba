"""Small-scale training of V4-architecture models, and the demo model's data and evaluation.

Workflow (the demo model; `demo_model.py` has its architecture):

    dsv4 train-data --out runs/demo/tasks.jsonl --n 60000 --seed 0 --chat 0.3 --think 0.55 --tools 0.15
    torchrun --nproc-per-node 2 -m dsv4.cli train --data runs/demo/tasks.jsonl --out runs/demo --model demo \\
        --resume --steps 1000 --batch-size 16 --micro-batch 8 --seq-len 512 --lr 3e-3 --warmup 50 \\
        --eval-every 100 --ckpt-every 10 --log-every 10
    dsv4 train-export runs/demo/ckpt.pt MODEL_DIR          # official FP8/FP4 layout
    dsv4 eval --model MODEL_DIR --seed 1 --json              # held-out tasks (training used seed 0)

Modules: tasks / task_words / task_messages / calculator / grading (the synthetic tasks), task_data (tasks as
chat records), data (documents, masks, packing, batches), vocab (compact training vocabulary), initialization,
loss (LM + MTP), balance (gate-bias balancing), muon / param_groups (optimizers), train_config, loop,
checkpoint, distributed, progress, plot, evaluate / greedy (task accuracy), threads.
"""
