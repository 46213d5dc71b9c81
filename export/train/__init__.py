"""Fine-tuning the prompt encoder and mask decoder for point prompts (SAM-Med2D's recipe).

Modules: `data` (datasets in SAM-Med2D's layout, split by source, masks in the decoder's frame), `embeddings`
(the on-disk image-embedding cache of the CPU mode), `prompts` (simulated boxes, points and corrective clicks),
`losses` (focal + Dice + IoU regression), `finetune` (the training stage and its CLI).
"""
