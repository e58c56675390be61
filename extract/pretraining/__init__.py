"""Demo-model pretraining, one module per objective (`extract.demo_pretrain` drives them)."""
