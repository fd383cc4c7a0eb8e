"""Named entities of a Hindi answer that its context does not mention, found without a list of heads.

A word of the answer is part of a name when it is a content word that neither the context nor a
Hindi common-word list (below) contains; adjacent such words form one entity ("महाराजा रणजीत
सिंह" -> "रणजीत सिंह" when महाराजा is common). So "बिहार राज्य", "यमुना नदी", "गोदान उपन्यास" and
"भूमिहार राजवंश" are caught without knowing राज्य, नदी or राजवंश as heads, and a common word
before a head ("कारण मंदिर") is never a name.

Words are compared by a *name key*, not by the crude stem of gen/faithful.py (which drops every
matra, so बिहार and बाहर, संत and सात fold together): the key folds only spelling variants (nukta,
chandrabindu/anusvara, ZWJ/ZWNJ, case), and two keys are one word when the shorter, less a final
vowel sign, begins the longer and the longer adds an ending of at most four vowels, nasals or य
(मंदिर/मंदिरों, किला/किले, पुजारी/पुजारियों). Names differing inside (बिहार/बाहर, राजा/रानी) or by
more than an ending (राम/रामानंद, गंगा/गंगोत्री) stay distinct; the
tests check 100+ place and person names pairwise and against the common words.

No Hindi NER model is used: the offline Hindi NLP packages (indic-nlp-library) have none, and
models may not be downloaded at run time.
"""
from __future__ import annotations

import functools
import re
import unicodedata

from gen.numbers import canonical, fold

_WORD = re.compile(r"[\u0900-\u0963\u0971-\u097F\u200c\u200d]+|[A-Za-z]+|\d+(?:[.,]\d+)*")
_VOWEL_SIGNS = frozenset(chr(c) for c in range(0x093E, 0x094D)) | {"\u0902", "\u0903"}
MAX_ENDING = 4  # code points an inflection may add: ों, ियों, ाएँ
# An inflected ending is vowels and nasals (and the य of ियों): रामानंद is no form of राम.
_ENDING_CHARS = _VOWEL_SIGNS | frozenset(chr(c) for c in range(0x0904, 0x0915)) | {"य"}

# Everyday Hindi and travel words (function words included): what a faithful paraphrase may add
# without naming anything. Inflected forms match through the ending rule above.
COMMON = """
है हैं था थे थी थीं हो होता होती होते होना होने हुआ हुई हुए की का के में से को पर और भी यह वह ये वे इस उस इन उन इसे
उसे इसका उसका इसकी उसकी इसके उसके एक ने तो ही कि जो या लिए किया किए की करता करती करते करना करने कर करके जाता जाती
जाते जाना जाने जा गया गई गए गयी रहा रही रहे रहना सकता सकती सकते सके लगता लगती लगते लगा लगी लगे मिलता मिलती
मिलते मिला मिली मिले मिलना देता देती देते दिया दी दिए देना लेता लेती लेते लिया ली लिए लेना लेकर देकर आता आती आते
आया आई आए आना आने बना बनी बने बनाया बनाई बनाए बनवाया बनवाई बनवाए बनवाना बनता बनती बनते चलता चलती चलते चलना
रखा रखी रखे रखना पड़ता पड़ती पड़ते पड़ा पड़ी पड़े पहुँचना पहुँचा पहुँचते पहुँच देखना देखने देखा देखी देखे देख
माना मानी माने मानते मान्यता जाना कहा कहते कहलाता कहलाती कहलाते प्रसिद्ध मशहूर विख्यात लोकप्रिय पुराना पुरानी पुराने
प्राचीन ऐतिहासिक नया नई नए बड़ा बड़ी बड़े छोटा छोटी छोटे सुंदर भव्य विशाल ऊँचा ऊँची ऊँचे लंबा लंबी लंबे गहरा खास
ख़ास विशेष मुख्य प्रमुख पवित्र धार्मिक सांस्कृतिक सार्वजनिक सरकारी निजी स्थानीय अच्छा अच्छी अच्छे सस्ता महँगा कई अनेक
कुछ सभी सब हर प्रत्येक कोई किसी अन्य दूसरा दूसरी दूसरे पहला पहली पहले बाद साथ द्वारा तक लगभग करीब क़रीब तकरीबन
ज़्यादा ज्यादा अधिक कम बहुत काफ़ी केवल सिर्फ़ भी फिर अब आज कल हमेशा अक्सर कभी रोज़ रोज प्रतिदिन सुबह शाम रात दोपहर
दिन सप्ताह हफ़्ता महीना साल वर्ष सदी शताब्दी समय घंटा मिनट बजे बजकर मौसम ऋतु त्योहार पर्व मेला उत्सव जयंती पूजा आरती
दर्शन प्रार्थना भजन कीर्तन प्रसाद भोग तीर्थ तीर्थयात्री यात्री पर्यटक सैलानी श्रद्धालु भक्त लोग व्यक्ति आदमी महिला बच्चे
बुज़ुर्ग परिवार भीड़ संख्या बड़ी जगह स्थान स्थल इलाका इलाके क्षेत्र हिस्सा भाग ओर तरफ़ किनारा किनारे पास निकट समीप दूर
दूरी बीच भीतर अंदर बाहर ऊपर नीचे सामने पीछे आसपास चारों उत्तर दक्षिण पूर्व पश्चिम शहर नगर गाँव गांव क़स्बा ज़िला ज़िले
जिला जिले राज्य प्रदेश देश विदेश भारत भारतीय नदी नदियों घाट मंदिर मस्जिद गुरुद्वारा चर्च आश्रम मठ धर्मशाला कुंड तालाब
झील सरोवर पहाड़ी पहाड़ पर्वत किला क़िला महल भवन इमारत दीवार सीढ़ियाँ सीढ़ी रास्ता सड़क गली बाज़ार बाजार दुकान दुकानें
होटल रेस्तराँ भोजन खाना नाश्ता मिठाई व्यंजन पानी जल दूध चाय स्टेशन हवाई अड्डा बस ऑटो रिक्शा टैक्सी नाव ट्रेन रेल
साधन सुविधा व्यवस्था टिकट शुल्क किराया कीमत दाम मूल्य रुपये रुपया रुपए पैसे पैसा मुफ़्त निःशुल्क प्रवेश खुला खुलता
खुलती खुलते बंद शुरू आरंभ प्रारंभ समाप्त ख़त्म संग्रहालय कलाकृतियाँ चित्र मूर्ति मूर्तियाँ प्रतिमा शिखर गुंबद मंडप
परिसर प्रांगण द्वार दरवाज़ा पत्थर लकड़ी सोना चाँदी पीतल धातु दीपक दीया दीये दीप रोशनी फूल माला राजा रानी महाराजा
बादशाह सम्राट नरेश शासक सेना सिपाही लड़ाई युद्ध राजवंश वंश लेखक कवि संत ऋषि मुनि स्वामी गुरु बाबा भगवान देवता
देवी देव माता पिता जन्म मृत्यु निर्माण स्थापना इतिहास कहानी कथा किताब किताबें पुस्तक उपन्यास भाषा भाषाओं
हिंदी नाम रूप तरह प्रकार तरीका कारण वजह इसलिए क्योंकि लेकिन परंतु किंतु तथा एवं जैसे जैसा जैसी ऐसे ऐसा यहाँ वहाँ
जहाँ यहीं वहीं कहाँ कब क्या कौन कैसे कितना कितनी कितने क्यों किस किसने किसे किन नहीं ना न हाँ बिना लायक योग्य
ज़रूरी जरूरी आवश्यक संभव उपलब्ध स्थित मौजूद समर्पित जुड़ा जुड़ी जुड़े संबंधित प्रसिद्धि पहचान अनुभव दृश्य नज़ारा
सुरक्षा ध्यान नियम सावधानी संभलकर आराम बैठकर चढ़ाना चढ़ाने चढ़ाते चढ़ी चढ़ा उतरना उतरते डूबा डूबी डूबे झुका झुकी
भारी हल्का गरम ठंडा लाल सफ़ेद पीला हरा नीला काला रंग धारियाँ परत जलाना जलाए जलाते जलती तपस्या दीक्षा साधना ध्यान
योग कामना उम्र आयु लंबी जीवन सेवा दान लंगर भंडारा अवसर मौका दिवस स्मारक स्मृति याद घर मकान कमरा पैतृक चश्मा
किलोमीटर किमी मीटर फ़ुट फुट किलो किलोग्राम लीटर प्रतिशत संगम तट सन् सन ई ईस्वी मनाना मनाई मनाया मनाए मनाते मनाती
उपयोग इस्तेमाल प्रयोग होकर चाहिए पाना पाते पाती बताना बताया बताते दिखता दिखती दिखते दिखाई कराना करवाया करवाई करवाते
घूमना घूमने घूमते ठहरना ठहरने रुकना रुकने खरीदना खरीदने खाना खाने पीना पीने नहाना स्नान डुबकी बैठना बैठने आयोजन
आयोजित संस्था समिति सरकार विभाग काम बात चीज़ चीज़ें वस्तु सामान सजाना सजाया सजावट गाना गाते संगीत नृत्य
अपना अपनी अपने मेरा मेरी हमारा हमारी आप आपका आपकी उनका उनकी उनके किसका किसकी किसके कौनसा कौनसी वाला वाली वाले
अनुसार दौरान बारे बजाय सहित समेत मदद सहायता आकार आकृति कार्यक्रम तय तैयार बैठ बैठा रुक रुकती रुकते रुका ज़्यादातर
ज्यादातर अधिकतर सूर्योदय सूर्यास्त कर्मचारी भुगतान गाइड बुकिंग सवारी नौका नौकाएँ सब्ज़ी सब्जी आलू सत्संग संस्कार
अंतिम शांति शांत शोर आवाज़ साफ़ सफ़ाई गंदगी कूड़ा कूड़ेदान धोखा धोखाधड़ी ठगी दलाल सलाह जानकारी सूचना फ़ोटो फोटो
खींचना खींचने कक्षा पढ़ाई छात्र विश्वविद्यालय विद्यालय अस्पताल पुलिस डॉक्टर ठहरना ठहरते मेहमान अतिथि मौजूदगी
""".split()


def key(word: str) -> str:
  """Name key: NFC, lower case, nukta and ZWJ/ZWNJ dropped, chandrabindu as anusvara (matras kept)."""
  return fold(word.lower()).replace("\u200c", "").replace("\u200d", "")


def _base(k: str) -> str:
  return k[:-1] if len(k) > 2 and k[-1] in _VOWEL_SIGNS else k


def same_word(a: str, b: str) -> bool:
  """Whether two name keys are one word up to an inflected ending (मंदिर/मंदिरों, not बिहार/बाहर)."""
  if a == b:
    return True
  short, long_ = sorted((a, b), key=len)
  base = _base(short)
  ending = long_[len(base):]
  return len(base) >= 2 and long_.startswith(base) and len(ending) <= MAX_ENDING and set(ending) <= _ENDING_CHARS


class Vocabulary:
  """Words indexed by their first two code points, for same_word look-ups."""

  def __init__(self, words):
    self.index: dict[str, set[str]] = {}
    for w in words:
      self.index.setdefault(w[:2], set()).add(w)

  def __contains__(self, k: str) -> bool:
    return any(same_word(k, w) for w in self.index.get(k[:2], ()))


_COMMON = Vocabulary(key(w) for w in COMMON)


def words(text: str) -> list[str]:
  """Name keys of the words of a text, numbers as digits (a number is never a name)."""
  return [key(w) for w in _WORD.findall(canonical(unicodedata.normalize("NFC", text)))]


def _uncommon(w: str) -> bool:
  return bool(w) and not w[0].isdigit() and len(w) > 1 and w not in _COMMON


def uncommon(text: str) -> set[str]:
  """Name keys of the words of a text that no common-word entry covers: the words that name things."""
  return {w for w in words(text) if _uncommon(w)}


@functools.lru_cache(maxsize=1 << 12)  # once per context, not once per pair of it
def _known_words(context: str, known: tuple[str, ...]) -> Vocabulary:
  return Vocabulary(words(context) + [key(w) for k in known for w in _WORD.findall(k)])


def unsupported(answer: str, context: str, known: tuple[str, ...] = ()) -> list[str]:
  """Entities of the answer (runs of uncommon words) that neither the context nor `known` contains."""
  known = _known_words(context, tuple(known))
  out, run = [], []
  for w in words(answer) + [""]:
    if _uncommon(w) and w not in known:
      run.append(w)
    elif run:
      out.append(" ".join(run))
      run = []
  return sorted(set(out))
