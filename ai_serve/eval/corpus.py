"""Short everyday call-centre sentences in English and Korean, for test speech (espeak-ng) and the
transcription benchmarks.

Written to be transcribable without ambiguity: no digits (Whisper may write "nine" as "9"), no
names, no abbreviations. English is lower case without punctuation (the reference for WER after
:func:`ai_serve.eval.speech.normalize`); Korean is written with spaces between words (WER) and
compared without spaces for CER.
"""

from __future__ import annotations

ENGLISH: tuple[str, ...] = (
    "hello thank you for calling customer service",
    "how can I help you today",
    "I would like to check my account balance",
    "can you please hold for a moment",
    "I am calling about my last bill",
    "my internet has been very slow this week",
    "let me transfer you to the billing department",
    "could you spell your last name for me",
    "thank you for waiting",
    "I need to change my delivery address",
    "the order has not arrived yet",
    "is there anything else I can help you with",
    "please tell me your phone number",
    "I want to cancel my subscription",
    "your payment was received yesterday",
    "we will send you a confirmation email",
    "the technician will call you tomorrow morning",
    "I cannot log in to my account",
    "please restart your router and try again",
    "have a nice day goodbye",
    "I would like to speak to a manager",
    "your request has been completed",
    "the store is open every day of the week",
    "I was charged twice for the same order",
    "we are sorry for the inconvenience",
    "can I have your email address please",
    "the new card will arrive in a few days",
    "I forgot my password",
    "please check your spam folder",
    "your refund will be processed this week",
    "do you want to upgrade your plan",
    "the line is very noisy can you hear me",
)

KOREAN: tuple[str, ...] = (
    "안녕하세요 고객센터입니다",
    "무엇을 도와드릴까요",
    "잠시만 기다려 주세요",
    "주문한 물건이 아직 도착하지 않았어요",
    "비밀번호를 잊어버렸어요",
    "배송 주소를 변경하고 싶어요",
    "요금이 두 번 청구되었어요",
    "담당자에게 연결해 드리겠습니다",
    "전화번호를 말씀해 주시겠어요",
    "인터넷이 너무 느려요",
    "환불은 언제 받을 수 있나요",
    "기다려 주셔서 감사합니다",
    "예약을 취소하고 싶습니다",
    "이메일로 확인서를 보내 드리겠습니다",
    "불편을 드려서 죄송합니다",
    "내일 오전에 기사님이 방문하실 예정입니다",
    "다른 문의 사항은 없으신가요",
    "카드 결제가 안 돼요",
    "좋은 하루 보내세요",
    "계좌 잔액을 확인하고 싶어요",
    "회원 가입은 어떻게 하나요",
    "상품을 교환할 수 있을까요",
    "영수증을 다시 받을 수 있나요",
    "요금제를 변경하고 싶어요",
    "통화 품질이 좋지 않네요",
    "로그인이 되지 않아요",
    "주문 내역을 확인해 드리겠습니다",
    "성함을 말씀해 주세요",
    "매장은 매일 문을 엽니다",
    "새 카드는 며칠 안에 도착합니다",
    "상담원과 통화하고 싶어요",
    "감사합니다 안녕히 계세요",
)

VOICES: dict[str, str] = {"en": "en-us", "ko": "ko"}  # espeak-ng voice per language
CORPUS: dict[str, tuple[str, ...]] = {"en": ENGLISH, "ko": KOREAN}
