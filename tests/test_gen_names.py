"""gen/names.py: Hindi named entities absent from the context, without a list of heads."""
import itertools

from gen import faithful, names
from gen.curate import REASONS

# Places, rivers, dynasties and people a Hindi tourism answer names (each must stay a word of its own).
NAMES = """
बिहार पंजाब राजस्थान गुजरात महाराष्ट्र बंगाल असम केरल ओडिशा तमिलनाडु कर्नाटक हरियाणा झारखंड छत्तीसगढ़ उत्तराखंड
मणिपुर नागालैंड गोवा तेलंगाना सिक्किम त्रिपुरा मिज़ोरम मेघालय यमुना सरस्वती गोमती नर्मदा गोदावरी कावेरी सरयू चंबल
घाघरा वरुणा ब्रह्मपुत्र सतलुज झेलम ताप्ती गंगा गंगोत्री वाराणसी प्रयागराज इलाहाबाद लखनऊ कानपुर आगरा मथुरा अयोध्या
गोरखपुर मिर्ज़ापुर चंदौली गाज़ीपुर जौनपुर आज़मगढ़ पटना दिल्ली मुंबई कोलकाता चेन्नई ग्वालियर उज्जैन हरिद्वार ऋषिकेश
सारनाथ चुनार रामनगर लमही कैथी भदैनी मौर्य गुप्त मुग़ल चोल गहड़वाल मराठा सूरी लोदी तुग़लक भूमिहार अकबर शाहजहाँ
औरंगज़ेब बाबर हुमायूँ अशोक कबीर तुलसीदास रविदास प्रेमचंद रामानंद राम शंकराचार्य बुद्ध महावीर हरिश्चंद्र बैजाबाई
अहिल्याबाई रणजीत मालवीय बिस्मिल्लाह हेस्टिंग्स विश्वनाथ अन्नपूर्णा दुर्गा हनुमान भैरव गणेश पार्वती लक्ष्मी शिव
कृष्ण दशाश्वमेध मणिकर्णिका पंचगंगा सिंधिया केदार तुलसी राजेंद्र ललिता दरभंगा गोदान कृष्णदास सोनवा शेरशाह
""".split()


def test_at_least_100_names_stay_distinct_and_none_is_a_common_word():
  assert len(NAMES) >= 100 and len(set(NAMES)) == len(NAMES)
  keys = [names.key(n) for n in NAMES]
  merged = [(a, b) for a, b in itertools.combinations(keys, 2) if names.same_word(a, b)]
  assert not merged, merged
  assert [n for n in NAMES if not names.uncommon(n)] == []
  # the crude grounding stem (every matra dropped) folds a name and a common word together; the key does not
  for name, word in [("बिहार", "बाहर"), ("संत", "सात"), ("कबीर", "कब्र")]:
    assert faithful.stem(name) == faithful.stem(word) and not names.same_word(names.key(name), names.key(word))

def test_inflections_and_spelling_variants_are_one_word():
  for a, b in [("मंदिर", "मंदिरों"), ("किला", "किले"), ("पुजारी", "पुजारियों"), ("देखना", "देखने"), ("नदी", "नदियों")]:
    assert names.same_word(names.key(a), names.key(b)), (a, b)
  assert names.key("मिर्ज़ापुर") == names.key("मिर्जापुर") and names.key("गाँव") == names.key("गांव")
  for a, b in [("राम", "रामानंद"), ("गंगा", "गंगोत्री"), ("राजा", "रानी"), ("संत", "सात"), ("सिंह", "सिंधिया")]:
    assert not names.same_word(names.key(a), names.key(b)), (a, b)


CTX = ("चुनार का किला मिर्ज़ापुर ज़िले में गंगा नदी के किनारे एक पहाड़ी पर बना है। सोलहवीं शताब्दी में शेरशाह सूरी ने "
       "इस किले पर अधिकार किया था। किले के भीतर सोनवा मंडप देखने लायक है।")


def test_entities_the_context_lacks_are_found_without_heads():
  assert names.unsupported("चुनार किला बिहार राज्य में स्थित है।", CTX) == ["बिहार"]
  assert names.unsupported("किला यमुना नदी के किनारे है।", CTX) == ["यमुना"]
  assert names.unsupported("इस किले पर मुग़ल बादशाह अकबर ने अधिकार किया।", CTX) == ["अकबर", "मुगल"]  # name keys
  assert names.unsupported("किले पर महाराजा रणजीत सिंह का राज था।", CTX) == ["रणजीत सिंह"]
  assert names.unsupported("चेत सिंह भूमिहार राजवंश के राजा थे।", "चेत सिंह घाट पर किला है।") == ["भूमिहार"]
  # supported: names of the context in another spelling or case form, common words, numbers
  assert names.unsupported("चुनार का क़िला मिर्जापुर ज़िले में है और यह गंगा के किनारे बना है।", CTX) == []
  assert names.unsupported("इसी कारण मंदिर बहुत प्रसिद्ध है।", "मंदिर प्रसिद्ध है।") == []
  assert faithful.unsupported_entities("किला बिहार में है।", CTX) == ["बिहार"]


def test_unsupported_entity_is_a_curation_reason_before_grounding():
  assert REASONS.index("unsupported_entity") < REASONS.index("ungrounded")


def test_known_entities_of_the_corpus_are_supported():
  answer = "लमही गाँव वाराणसी शहर के पास है।"
  assert names.unsupported(answer, "लमही गाँव शहर से आठ किलोमीटर दूर है।") == ["वाराणसी"]
  assert names.unsupported(answer, "लमही गाँव शहर से आठ किलोमीटर दूर है।", known=("वाराणसी", "काशी")) == []
  import gen
  assert "वाराणसी" in gen.default_config().curate.known_entities
