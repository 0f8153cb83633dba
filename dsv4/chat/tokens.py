"""V4 control strings and their token ids (serving spec §1.2).

Strings are exact bytes: note U+FF5C `｜` and U+2581 `▁`. The ids are checked
against the bundled tokenizer.json in tests.
"""

BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"
PAD = "<｜▁pad▁｜>"
USER = "<｜User｜>"
ASSISTANT = "<｜Assistant｜>"
LATEST_REMINDER = "<｜latest_reminder｜>"
THINK = "<think>"
END_THINK = "</think>"
DSML = "｜DSML｜"

BOS_ID = 0
EOS_ID = 1
PAD_ID = 2
USER_ID = 128803
ASSISTANT_ID = 128804
THINK_ID = 128821
END_THINK_ID = 128822
DSML_ID = 128825
LATEST_REMINDER_ID = 128828

# DeepSeek-internal quick-instruction tasks (spec §2.9); rendered only by the
# native renderer so golden test 4 reproduces, never reachable from requests.
TASK_TOKENS = {
    "action": "<｜action｜>",
    "query": "<｜query｜>",
    "authority": "<｜authority｜>",
    "domain": "<｜domain｜>",
    "title": "<｜title｜>",
    "read_url": "<｜read_url｜>",
}

# config.json vocab_size: 128,000 BPE ids + added tokens, ids 0-2 shared.
VOCAB_SIZE = 129280
