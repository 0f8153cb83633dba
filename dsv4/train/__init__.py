"""Small-scale training of V4-architecture models, and the demo model's data and evaluation.

Workflow (the demo model; `demo_model.py` has its architecture):

    dsv4 train-data --out runs/demo/tasks.jsonl --n 160000 --seed 0 --chat 0.22 --think 0.74 --tools 0.04 \\
        --kind-weights add=1.5,sub=2,mul=2,expr=2,count_letter=1,count_item=2.5,sort=3,weekday=0.5,convert=0.5
    torchrun --nproc-per-node 2 -m dsv4.cli train --data runs/demo/tasks.jsonl --out runs/demo --model demo \\
        --seed 0 --resume --steps 1500 --batch-size 16 --micro-batch 8 --seq-len 512 --lr 1e-2 --warmup 30 \\
        --eval-every 750 --ckpt-every 25 --log-every 10 --compile
    dsv4 train-export runs/demo/ckpt.pt dsv4/assets/demo --recipe FP4-FP8EH   # official FP8/FP4 layout
    # stages 2 to 4 fine-tune the shipped model (`--init-from dsv4/assets/demo`) on phrasings, conversations,
    # system prompts and scope questions: their exact commands are in the README ("The bundled demo model").
    dsv4 eval --seed 1 --json              # held-out tasks: the test split, whose inputs training never saw

Modules: tasks / task_words / task_messages / calculator / grading (the synthetic tasks), phrasing / phrase_parts /
conversations (the tasks as people ask them), task_data (tasks as chat records), data (documents, masks, packing,
batches), vocab (compact training vocabulary), initialization, loss (LM + MTP), balance (gate-bias balancing),
muon / param_groups (optimizers), train_config, loop, checkpoint, distributed, progress, plot, evaluate / greedy
(task accuracy), threads.
"""
