"""Versioned Hindi prompt templates: few-shot QA generation and the LLM judge.

A template is plain text with $-placeholders (string.Template), so its sha256 identifies exactly
what a teacher saw; the hash and PROMPT_VERSION go into every synthetic record's provenance. Change
PROMPT_VERSION whenever a template changes meaning. Prompts are chat messages (system, user);
each backend renders them its own way (vLLM/OpenAI chat, or our tokenizer's chat template).
"""
from __future__ import annotations

import hashlib
import json
import random
import string

PROMPT_VERSION = "qa-hi-v2"  # v2: the answer is an object {"pairs": [...]} (structured output needs an object root)
JUDGE_VERSION = "judge-hi-v1"

GEN_SYSTEM = (
  "आप वाराणसी पर्यटन के जानकार हैं और हिंदी में प्रश्न-उत्तर डेटा तैयार करते हैं। "
  "आप केवल दिए गए संदर्भ में लिखी जानकारी का उपयोग करते हैं और केवल JSON लौटाते हैं।")

GEN_USER = """विषय-क्षेत्र: $domain

इसी क्षेत्र के कुछ उदाहरण प्रश्न-उत्तर (केवल शैली समझने के लिए):
$examples

संदर्भ:
\"\"\"
$context
\"\"\"
$existing
ऊपर दिए संदर्भ के आधार पर $n नए प्रश्न-उत्तर जोड़े बनाइए। नियम:
1. हर उत्तर संदर्भ में लिखी जानकारी से ही निकले; अपनी ओर से कोई तथ्य न जोड़ें।
2. उत्तर पूरे वाक्य में, शुद्ध हिंदी (देवनागरी लिपि) में लिखें।
3. प्रश्न एक-दूसरे से और पहले से मौजूद प्रश्नों से अलग हों, और संदर्भ के अलग-अलग तथ्यों के बारे में हों।
4. केवल एक JSON वस्तु लौटाएँ: {"pairs": [{"question": "...", "answer": "..."}, ...]}; JSON के पहले या बाद कुछ न लिखें।"""

GEN_EXISTING = """
इस संदर्भ पर ये प्रश्न पहले से मौजूद हैं, इन्हें न दोहराएँ:
$questions
"""

JUDGE_SYSTEM = "आप हिंदी प्रश्न-उत्तर डेटा के सख़्त परीक्षक हैं। आप केवल JSON लौटाते हैं।"

JUDGE_USER = """संदर्भ:
\"\"\"
$context
\"\"\"

प्रश्न: $question
उत्तर: $answer

जाँचिए:
1. क्या प्रश्न का उत्तर संदर्भ से दिया जा सकता है?
2. क्या उत्तर सही है और पूरी तरह संदर्भ पर आधारित है?
3. क्या उत्तर पूरे वाक्य में स्वाभाविक हिंदी में है?
तीनों बातें सही हों तो "yes", वरना "no" लिखें।
केवल यह JSON लौटाएँ: {"verdict": "yes" या "no", "reason": "एक छोटा कारण"}"""

# JSON schema of the expected answer, for engines with structured (constrained) output. The root is
# an object: OpenAI's json_schema and json_object modes and several grammar backends cannot start a list.
PAIRS_SCHEMA = {
  "type": "object",
  "properties": {"pairs": {
    "type": "array",
    "minItems": 1,
    "items": {
      "type": "object",
      "properties": {"question": {"type": "string"}, "answer": {"type": "string"}},
      "required": ["question", "answer"],
      "additionalProperties": False,
    },
  }},
  "required": ["pairs"],
  "additionalProperties": False,
}
VERDICT_SCHEMA = {
  "type": "object",
  "properties": {"verdict": {"type": "string", "enum": ["yes", "no"]}, "reason": {"type": "string"}},
  "required": ["verdict", "reason"],
  "additionalProperties": False,
}


def _sha256(*parts: str) -> str:
  return hashlib.sha256("\x00".join(parts).encode("utf-8")).hexdigest()


def template_hash() -> str:
  """sha256 of the generation templates' text (system, user, existing-questions block)."""
  return _sha256(GEN_SYSTEM, GEN_USER, GEN_EXISTING)


def judge_template_hash() -> str:
  """sha256 of the judge templates' text."""
  return _sha256(JUDGE_SYSTEM, JUDGE_USER)


def pick_examples(pool: list[tuple[str, str, str]], k: int, seed: str,
                  exclude_context: str = "") -> list[tuple[str, str]]:
  """k (question, answer) examples drawn reproducibly from `pool` of (context_id, q, a).

  Examples from the context being prompted are avoided (the teacher would copy them), unless
  the domain has no others.
  """
  others = [(q, a) for cid, q, a in pool if cid != exclude_context]
  source = others or [(q, a) for _, q, a in pool]
  rng = random.Random(seed)  # str seeds hash stably (sha512), unlike hash()
  return rng.sample(source, min(k, len(source)))


def build_messages(domain: str, context: str, examples: list[tuple[str, str]], num_pairs: int,
                   existing_questions: list[str] = ()) -> list[dict[str, str]]:
  """System and user chat messages asking for `num_pairs` new QA pairs as {"pairs": [...]}."""
  shots = json.dumps([{"question": q, "answer": a} for q, a in examples], ensure_ascii=False, indent=1)
  existing = ""
  if existing_questions:
    listed = "\n".join(f"- {q}" for q in existing_questions)
    existing = string.Template(GEN_EXISTING).substitute(questions=listed)
  user = string.Template(GEN_USER).substitute(
    domain=domain, examples=shots if examples else "[]", context=context, existing=existing, n=num_pairs)
  return [{"role": "system", "content": GEN_SYSTEM}, {"role": "user", "content": user}]


def build_judge_messages(context: str, question: str, answer: str) -> list[dict[str, str]]:
  """Chat messages asking the judge for a JSON verdict on one pair."""
  user = string.Template(JUDGE_USER).substitute(context=context, question=question, answer=answer)
  return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": user}]
